//! oxcdctl against etcdctl: the same commands run through Debian's etcdctl 3.4 and through
//! oxcdctl against one server must print the same stdout, the same stderr (minus the Go client's
//! JSON retry warnings) and exit with the same code.
//!
//! Read-only commands run back to back on an unchanged store and must match byte for byte.
//! Mutating commands run in parallel key namespaces, etcdctl's under `ctl-e/` and oxcdctl's under
//! `ctl-o/`, with identical histories; their outputs are compared after [`Normalise`] rewrites
//! exactly what must differ: the namespace, revision numbers (header `revision`,
//! `create_revision`, `mod_revision`, in every format), and the ids of leases and members each
//! tool created, plus the time an endpoint health check took and a lease's remaining TTL.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncWriteExt;

use oxcd_tests::cluster::{etcdctl_bin, Cluster};
use oxcd_tests::{free_port, oxcdctl_bin, require_etcd, Flavor, Server};

const FORMATS: [&str; 5] = ["simple", "json", "fields", "table", "protobuf"];

/// What one run printed and how it ended.
#[derive(Debug, Clone, PartialEq)]
struct Run {
    stdout: String,
    /// Stderr without the Go client's JSON log lines.
    stderr: String,
    code: Option<i32>,
}

fn command(bin: &Path, endpoints: &str, args: &[String]) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(bin);
    for (key, _) in std::env::vars_os() {
        if key.to_string_lossy().starts_with("ETCDCTL_") {
            cmd.env_remove(key);
        }
    }
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn finish(output: std::process::Output, killed: bool) -> Run {
    let stderr = String::from_utf8_lossy(&output.stderr)
        .lines()
        .filter(|line| !line.starts_with("{\"level\""))
        .map(|line| format!("{line}\n"))
        .collect();
    Run {
        // Protobuf output is binary; lossy text still compares every byte that differs.
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr,
        code: if killed { None } else { output.status.code() },
    }
}

/// Runs to completion with `stdin` as input.
async fn run(bin: &Path, endpoints: &str, args: &[String], stdin: &str) -> Run {
    run_with_env(bin, endpoints, args, stdin, &[]).await
}

/// [`run`] with `ETCDCTL_*` (or other) variables set.
async fn run_with_env(
    bin: &Path,
    endpoints: &str,
    args: &[String],
    stdin: &str,
    env: &[(&str, &str)],
) -> Run {
    let mut child = command(bin, endpoints, args)
        .envs(env.iter().copied())
        .spawn()
        .expect("spawning the CLI");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let output = tokio::time::timeout(Duration::from_secs(30), child.wait_with_output())
        .await
        .unwrap_or_else(|_| panic!("{} {args:?} still running after 30s", bin.display()))
        .unwrap();
    finish(output, false)
}

/// Runs for `duration` with stdin held open, then kills the process: for watches.
async fn run_for(
    bin: &Path,
    endpoints: &str,
    args: &[String],
    stdin: &str,
    duration: Duration,
) -> Run {
    let mut child = command(bin, endpoints, args)
        .spawn()
        .expect("spawning the CLI");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    tokio::time::sleep(duration).await;
    child.start_kill().unwrap();
    let output = child.wait_with_output().await.unwrap();
    drop(input);
    finish(output, true)
}

/// Rewrites what legitimately differs between the two tools' runs of a mutating command.
#[derive(Default, Clone)]
struct Normalise {
    /// (text in oxcdctl's run, text in etcdctl's run, placeholder), e.g. lease ids.
    ids: Vec<(String, String, String)>,
}

const REVISION_FIELDS: [&str; 7] = [
    "revision",
    "create_revision",
    "mod_revision",
    "Revision",
    "CreateRevision",
    "ModRevision",
    "compact_revision",
];

impl Normalise {
    fn id(mut self, etcdctl: impl ToString, oxcdctl: impl ToString, name: &str) -> Normalise {
        self.ids
            .push((oxcdctl.to_string(), etcdctl.to_string(), name.to_string()));
        self
    }

    /// A lease or member id, in the hex and decimal forms the formats print.
    /// Longest forms first: space-padded (`%16x`), zero-padded (`%016x`), bare hex, decimal.
    fn numeric_id(self, etcdctl: u64, oxcdctl: u64, name: &str) -> Normalise {
        self.id(format!("{etcdctl:16x}"), format!("{oxcdctl:16x}"), name)
            .id(format!("{etcdctl:016x}"), format!("{oxcdctl:016x}"), name)
            .id(format!("{etcdctl:x}"), format!("{oxcdctl:x}"), name)
            .id(etcdctl, oxcdctl, name)
    }

    fn apply(&self, text: &str, by_etcdctl: bool) -> String {
        let text = text.replace("ctl-e/", "ctl-N/").replace("ctl-o/", "ctl-N/");
        let mut text = text
            .lines()
            .map(normalise_line)
            .collect::<Vec<_>>()
            .join("\n");
        for (oxcdctl, etcdctl, name) in &self.ids {
            text = text.replace(if by_etcdctl { etcdctl } else { oxcdctl }, name);
        }
        text
    }
}

/// Revision numbers and other run-dependent values in one line of any format.
fn normalise_line(line: &str) -> String {
    if line.starts_with('{') || line.starts_with('[') {
        return normalise_json(line);
    }
    for field in REVISION_FIELDS
        .iter()
        .flat_map(|f| [f.to_string(), format!("Prev{f}")])
        .chain(["TTL".to_string()])
    {
        if line.starts_with(&format!("\"{field}\" : ")) {
            return format!("\"{field}\" : N");
        }
    }
    if let Some(rest) = line.split_once(", remaining(") {
        let tail = rest.1.split_once(')').map_or("", |t| t.1);
        return format!("{}, remaining(N){tail}", rest.0);
    }
    line.to_string()
}

/// JSON, edited as text so field order still counts: revision and TTL numbers become `N`, and
/// base64 strings that decode to a namespaced key or value are decoded and normalised.
fn normalise_json(line: &str) -> String {
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let mut out = String::new();
    let mut rest = line;
    while let Some(start) = rest.find('"') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        let end = after.find('"').expect("unterminated JSON string");
        let token = &after[..end];
        rest = &after[end + 1..];
        let decoded = b64
            .decode(token)
            .ok()
            .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
            .filter(|text| text.contains("ctl-e/") || text.contains("ctl-o/"));
        match decoded {
            Some(text) => out.push_str(&format!(
                "{:?}",
                text.replace("ctl-e/", "ctl-N/").replace("ctl-o/", "ctl-N/")
            )),
            None => out.push_str(&format!("\"{token}\"")),
        }
        let is_number_field = REVISION_FIELDS.contains(&token) || token == "ttl";
        if is_number_field && rest.starts_with(':') {
            let digits = rest[1..]
                .find(|c: char| !(c.is_ascii_digit() || c == '-'))
                .unwrap_or(rest.len() - 1);
            out.push_str(":N");
            rest = &rest[1 + digits..];
        }
    }
    out.push_str(rest);
    out
}

/// Both tools against the same endpoints.
struct Tools {
    endpoints: String,
    etcdctl: PathBuf,
    oxcdctl: PathBuf,
}

fn strings(args: &[&str]) -> Vec<String> {
    args.iter().map(|a| a.to_string()).collect()
}

impl Tools {
    fn new(endpoints: &[String]) -> Tools {
        let oxcdctl = oxcdctl_bin();
        assert!(
            oxcdctl.is_file(),
            "oxcdctl not found at {} (cargo build -p oxcdctl, or set OXCDCTL_BIN)",
            oxcdctl.display()
        );
        Tools {
            endpoints: endpoints.join(","),
            etcdctl: etcdctl_bin(),
            oxcdctl,
        }
    }

    /// A read-only command: identical output, byte for byte.
    async fn same(&self, args: &[&str]) -> Run {
        self.same_with_input(args, "").await
    }

    async fn same_with_input(&self, args: &[&str], stdin: &str) -> Run {
        let args = strings(args);
        let expected = run(&self.etcdctl, &self.endpoints, &args, stdin).await;
        let actual = run(&self.oxcdctl, &self.endpoints, &args, stdin).await;
        assert_eq!(
            actual, expected,
            "oxcdctl {args:?} (stdin {stdin:?}) differs from etcdctl"
        );
        expected
    }

    /// A mutating command: etcdctl runs it on `ctl-e/`, then oxcdctl on `ctl-o/` (`{ns}` in
    /// the arguments and input), compared after `normalise`. Returns both runs.
    async fn parallel(&self, args: &[&str], stdin: &str, normalise: &Normalise) -> (Run, Run) {
        let (expected, actual) = self.parallel_unchecked(args, stdin).await;
        assert_same_normalised(args, &expected, &actual, normalise);
        (expected, actual)
    }

    async fn parallel_unchecked(&self, args: &[&str], stdin: &str) -> (Run, Run) {
        let with = |ns: &str| -> (Vec<String>, String) {
            (
                args.iter().map(|a| a.replace("{ns}", ns)).collect(),
                stdin.replace("{ns}", ns),
            )
        };
        let (e_args, e_in) = with("ctl-e/");
        let (o_args, o_in) = with("ctl-o/");
        let expected = run(&self.etcdctl, &self.endpoints, &e_args, &e_in).await;
        let actual = run(&self.oxcdctl, &self.endpoints, &o_args, &o_in).await;
        (expected, actual)
    }

    /// A watch: both run for `duration` and are killed; their stdout must match.
    async fn same_watch(&self, args: &[&str], stdin: &str) {
        let args = strings(args);
        let wait = Duration::from_millis(1500);
        let expected = run_for(&self.etcdctl, &self.endpoints, &args, stdin, wait).await;
        let actual = run_for(&self.oxcdctl, &self.endpoints, &args, stdin, wait).await;
        assert!(
            !expected.stdout.is_empty(),
            "etcdctl {args:?} printed nothing"
        );
        assert_eq!(actual, expected, "oxcdctl {args:?} differs from etcdctl");
    }
}

fn assert_same_normalised(args: &[&str], expected: &Run, actual: &Run, normalise: &Normalise) {
    let norm = |r: &Run, by_etcdctl: bool| Run {
        stdout: normalise.apply(&r.stdout, by_etcdctl),
        stderr: normalise.apply(&r.stderr, by_etcdctl),
        code: r.code,
    };
    assert_eq!(
        norm(actual, false),
        norm(expected, true),
        "oxcdctl {args:?} differs from etcdctl after normalising\n etcdctl: {expected:?}\n oxcdctl: {actual:?}"
    );
}

/// The lease id a `lease grant -w json` printed.
fn lease_id(run: &Run) -> u64 {
    let json: serde_json::Value = serde_json::from_str(&run.stdout)
        .unwrap_or_else(|e| panic!("lease grant printed no JSON ({e}): {run:?}"));
    json["ID"].as_u64().expect("lease grant JSON has an ID")
}

/// Keys every read-only comparison sees; written once, so revisions are fixed.
async fn seed_shared(tools: &Tools) {
    for (key, value) in [
        ("shared/a", "1"),
        ("shared/b", "two words"),
        ("shared/c", "q\"uote\\"),
        ("shared/a", "3"),
        ("shared/d", "4"),
    ] {
        let args = strings(&["put", key, value]);
        let put = run(&tools.oxcdctl, &tools.endpoints, &args, "").await;
        assert_eq!(put.stdout, "OK\n", "{put:?}");
    }
    let del = run(
        &tools.oxcdctl,
        &tools.endpoints,
        &strings(&["del", "shared/d"]),
        "",
    )
    .await;
    assert_eq!(del.stdout, "1\n", "{del:?}");
    // Binary values, as Kubernetes stores them; etcdctl reads the value from stdin.
    for key in ["shared/bin", "/registry/pods/default/web"] {
        let args = strings(&["put", key]);
        let put = run(
            &tools.oxcdctl,
            &tools.endpoints,
            &args,
            "k8s\u{0}\u{1}\u{7f}é\n\u{fffd}",
        )
        .await;
        assert_eq!(put.stdout, "OK\n", "{put:?}");
    }
}

async fn read_only_kv(tools: &Tools) {
    for w in FORMATS {
        for args in [
            vec!["get", "shared/a"],
            vec!["get", "shared/", "--prefix"],
            vec!["get", "", "--prefix", "--keys-only"],
            vec!["get", "shared/a", "shared/c"],
            vec!["get", "shared/b", "--from-key", "--limit", "2"],
            vec![
                "get",
                "shared/",
                "--prefix",
                "--sort-by",
                "MODIFY",
                "--order",
                "DESCEND",
            ],
            vec!["get", "shared/", "--prefix", "--sort-by", "value"],
            vec!["get", "shared/", "--prefix", "--order", "ascend"],
            vec!["get", "shared/a", "--rev", "3"],
            vec!["get", "shared/", "--prefix", "--print-value-only"],
            vec!["get", "shared/", "--prefix", "--hex"],
            vec!["get", "shared/bin"],
            vec!["get", "/", "--prefix", "--keys-only"],
            vec!["get", "/registry/", "--prefix"],
            vec!["get", "shared/a", "--consistency", "s"],
            vec![
                "get",
                "shared/",
                "--prefix=true",
                "--keys-only=false",
                "--hex=false",
            ],
            vec!["get", "nothing-here"],
        ] {
            let mut args = args.clone();
            args.extend(["-w", w]);
            tools.same(&args).await;
        }
        // A transaction of reads only changes nothing.
        let txn = "val(\"shared/a\") = \"3\"\n\nget shared/a\nget shared/ --prefix --keys-only\n\nget shared/b\n\n";
        tools.same_with_input(&["txn", "-w", w], txn).await;
        let failing = "mod(\"shared/a\") < \"2\"\n\nget shared/a\n\nget shared/b --print-value-only\nget shared/c\n\n";
        tools.same_with_input(&["txn", "-w", w], failing).await;
        tools
            .same_with_input(
                &["txn", "-i", "-w", w],
                "ver(\"shared/a\") > \"1\"\n\nget shared/a\n\n\n",
            )
            .await;
        // etcdctl 3.4 crashes printing an alarm response without a header (no alarms) as
        // fields; oxcdctl prints a zero header instead.
        if w != "fields" {
            tools.same(&["alarm", "list", "-w", w]).await;
        }
        tools.same(&["endpoint", "hashkv", "-w", w]).await;
        tools.same(&["lease", "list", "-w", w]).await;
    }
    tools.same(&["version"]).await;
    // Usage pages: a command group without a subcommand, and --help.
    for args in [
        vec!["lease"],
        vec!["member"],
        vec!["endpoint"],
        vec!["alarm"],
        vec!["get", "--help"],
        vec!["put", "-h"],
        vec!["endpoint", "status", "--help"],
        vec!["lease", "keep-alive", "--help"],
    ] {
        let usage = tools.same(&args).await;
        assert!(usage.stdout.starts_with("NAME:\n"), "{args:?}: {usage:?}");
    }
}

async fn bad_input(tools: &Tools) {
    for args in [
        vec!["get"],
        vec!["put"],
        vec!["del"],
        vec!["del", "a", "b", "c"],
        vec!["get", "a", "--prefix", "--from-key"],
        vec!["get", "a", "b", "--prefix"],
        vec!["get", "a", "--consistency", "x"],
        vec!["get", "a", "--sort-by", "size"],
        vec!["get", "a", "--order", "sideways"],
        vec!["get", "a", "-w", "yaml"],
        vec!["get", "a", "-w", "table"],
        vec!["get", "a", "--print-value-only", "-w", "json"],
        vec!["put", "a", "b", "--lease", "zz"],
        vec!["put", "a", "b", "-w", "table"],
        vec!["put", "a", "b", "--ignore-value"],
        vec!["compaction"],
        vec!["compaction", "abc"],
        vec!["lease", "grant"],
        vec!["lease", "grant", "x"],
        vec!["lease", "revoke", "zz"],
        vec!["lease", "revoke", "1234"],
        vec!["lease", "timetolive"],
        vec!["lease", "keep-alive", "--once", "1234"],
        vec!["lease", "keep-alive"],
        vec!["member", "add"],
        vec!["member", "add", "x"],
        vec!["member", "add", "x", "http://127.0.0.1:1"],
        vec!["member", "remove"],
        vec!["member", "remove", "zz"],
        vec!["member", "update", "1"],
        vec!["member", "promote"],
        vec!["move-leader"],
        vec!["move-leader", "zz"],
        vec!["alarm", "list", "extra"],
        vec!["alarm", "disarm", "extra"],
        vec!["txn", "extra"],
        vec!["watch"],
        vec!["watch", "a", "b", "--prefix"],
        vec!["watch", "a", "--"],
        vec!["frobnicate"],
    ] {
        let run = tools.same(&args).await;
        assert_ne!(run.code, Some(0), "{args:?} should fail: {run:?}");
    }
    // Flag errors: the error twice on stderr around the command's usage on stdout.
    for args in [
        vec!["get", "a", "--bogus"],
        vec!["get", "a", "-x"],
        vec!["get", "a", "--limit=x"],
        vec!["watch", "a", "--rev=x"],
        vec!["put", "--bogus"],
        vec!["txn", "--bogus"],
        vec!["lease", "timetolive", "--bogus"],
        vec!["member", "add", "--bogus"],
        vec!["endpoint", "status", "--bogus"],
        vec!["defrag", "--bogus"],
        vec!["move-leader", "--bogus"],
        vec!["get", "--prefix=maybe", "a"],
        vec!["get", "a", "-w"],
        vec!["get", "a", "--limit"],
    ] {
        let run = tools.same(&args).await;
        assert!(run.stdout.starts_with("NAME:\n"), "{args:?}: {run:?}");
    }
    // An unknown lease is not an error for timetolive: it reports the lease expired.
    for w in FORMATS {
        tools.same(&["lease", "timetolive", "1234", "-w", w]).await;
    }
    for txn in [
        "bogus\n",
        "val(\"a\") = \"x\"\n\nput\n",
        "val(\"a\") = \"x\"\n\n",
        "ver(\"a\") = \"x\"\n",
        "size(\"a\") = \"1\"\n",
        "val(\"a\") = \"x\"\n\nfrob a b\n",
    ] {
        tools.same_with_input(&["txn"], txn).await;
    }
}

async fn mutations(tools: &Tools) {
    let plain = Normalise::default();
    for w in ["simple", "json", "fields"] {
        tools
            .parallel(&["put", "{ns}k", "v1", "-w", w], "", &plain)
            .await;
        tools
            .parallel(&["put", "{ns}k", "v2", "--prev-kv", "-w", w], "", &plain)
            .await;
        tools
            .parallel(
                &["put", "{ns}k", "--ignore-value", "--prev-kv", "-w", w],
                "",
                &plain,
            )
            .await;
        tools
            .parallel(&["put", "{ns}stdin", "-w", w], "from stdin\n", &plain)
            .await;
        tools
            .parallel(&["put", "{ns}gone", "x", "-w", w], "", &plain)
            .await;
        tools
            .parallel(&["del", "{ns}gone", "--prev-kv", "-w", w], "", &plain)
            .await;
        tools
            .parallel(&["put", "{ns}p/1", "x", "-w", w], "", &plain)
            .await;
        tools
            .parallel(&["put", "{ns}p/2", "y", "-w", w], "", &plain)
            .await;
        tools
            .parallel(
                &["del", "{ns}p/", "--prefix", "--prev-kv", "-w", w],
                "",
                &plain,
            )
            .await;
        // --from-key ranges are open-ended, so only one past every key compares in parallel.
        tools.same(&["del", "~", "--from-key", "-w", w]).await;
        tools.same(&["get", "~", "--from-key", "-w", w]).await;
        let txn = "val(\"{ns}k\") = \"v2\"\nversion(\"{ns}k\") > \"0\"\n\nput {ns}k v3 --prev-kv\nget {ns}k\ndel {ns}stdin --prev-kv\n\nput {ns}k never\n\n";
        tools.parallel(&["txn", "-w", w], txn, &plain).await;
        let txn =
            "c(\"{ns}k\") = \"0\"\n\nput {ns}k never\n\nput {ns}t \"quoted value\"\ndel {ns}k\n\n";
        tools.parallel(&["txn", "-w", w], txn, &plain).await;
        tools
            .parallel(&["put", "{ns}k", "again", "-w", w], "", &plain)
            .await;
    }
}

async fn leases(tools: &Tools) {
    let plain = Normalise::default();
    let (e, o) = tools
        .parallel_unchecked(&["lease", "grant", "1000", "-w", "json"], "")
        .await;
    let leases = Normalise::default().numeric_id(lease_id(&e), lease_id(&o), "LEASE");
    assert_same_normalised(&["lease", "grant"], &e, &o, &leases);
    let (e_hex, o_hex) = (format!("{:x}", lease_id(&e)), format!("{:x}", lease_id(&o)));
    let with_lease = |args: &[&str], hex: &str| -> Vec<String> {
        args.iter().map(|a| a.replace("{lease}", hex)).collect()
    };
    // One key per lease: a lease's keys come in the server's map order.
    for (args, stdin) in [
        (vec!["put", "{ns}leased", "x", "--lease", "{lease}"], ""),
        (vec!["put", "{ns}leased", "y", "--lease={lease}"], ""),
        (
            vec![
                "put",
                "{ns}leased",
                "z",
                "--ignore-lease",
                "--prev-kv",
                "-w",
                "json",
            ],
            "",
        ),
    ] {
        let e_args = with_lease(&args, &e_hex);
        let o_args = with_lease(&args, &o_hex);
        let expected = run(
            &tools.etcdctl,
            &tools.endpoints,
            &subst(&e_args, "ctl-e/"),
            stdin,
        )
        .await;
        let actual = run(
            &tools.oxcdctl,
            &tools.endpoints,
            &subst(&o_args, "ctl-o/"),
            stdin,
        )
        .await;
        assert_same_normalised(&args, &expected, &actual, &leases);
    }
    for w in FORMATS {
        for args in [
            vec!["lease", "timetolive", "{lease}"],
            vec!["lease", "timetolive", "{lease}", "--keys"],
            vec!["lease", "keep-alive", "--once", "{lease}"],
        ] {
            let mut args = args.clone();
            args.extend(["-w", w]);
            let expected = run(
                &tools.etcdctl,
                &tools.endpoints,
                &with_lease(&args, &e_hex),
                "",
            )
            .await;
            let actual = run(
                &tools.oxcdctl,
                &tools.endpoints,
                &with_lease(&args, &o_hex),
                "",
            )
            .await;
            assert_same_normalised(&args, &expected, &actual, &leases);
        }
        let (g_e, g_o) = tools
            .parallel_unchecked(&["lease", "grant", "5", "-w", w], "")
            .await;
        assert_eq!(g_e.code, g_o.code, "lease grant -w {w}: {g_e:?} {g_o:?}");
        assert_eq!(g_e.stderr, g_o.stderr, "lease grant -w {w}");
    }
    // Revoking: each tool revokes its own lease, then both ask about it.
    for (id_e, id_o, w) in [(&e_hex, &o_hex, "json")] {
        let expected = run(
            &tools.etcdctl,
            &tools.endpoints,
            &strings(&["lease", "revoke", id_e, "-w", w]),
            "",
        )
        .await;
        let actual = run(
            &tools.oxcdctl,
            &tools.endpoints,
            &strings(&["lease", "revoke", id_o, "-w", w]),
            "",
        )
        .await;
        assert_same_normalised(&["lease", "revoke"], &expected, &actual, &leases);
        let expected = run(
            &tools.etcdctl,
            &tools.endpoints,
            &strings(&["lease", "timetolive", id_e]),
            "",
        )
        .await;
        let actual = run(
            &tools.oxcdctl,
            &tools.endpoints,
            &strings(&["lease", "timetolive", id_o]),
            "",
        )
        .await;
        assert_same_normalised(&["lease", "timetolive"], &expected, &actual, &leases);
        tools
            .parallel(&["get", "{ns}leased", "--prefix"], "", &plain)
            .await;
    }
    // A keep-alive of a lease that is revoked meanwhile ends with etcdctl's notice.
    let short = tools
        .parallel_unchecked(&["lease", "grant", "6", "-w", "json"], "")
        .await;
    let (se, so) = (lease_id(&short.0), lease_id(&short.1));
    let short_ids = Normalise::default().numeric_id(se, so, "LEASE");
    let keep_e = tokio::spawn(run_killed_after_revoke(
        tools.etcdctl.clone(),
        tools.endpoints.clone(),
        se,
    ));
    let keep_o = tokio::spawn(run_killed_after_revoke(
        tools.oxcdctl.clone(),
        tools.endpoints.clone(),
        so,
    ));
    let (keep_e, keep_o) = (keep_e.await.unwrap(), keep_o.await.unwrap());
    assert!(keep_e.stdout.contains("expired or revoked"), "{keep_e:?}");
    assert_same_normalised(&["lease", "keep-alive"], &keep_e, &keep_o, &short_ids);
}

/// `lease keep-alive ID`, with the lease revoked (by oxcdctl) a second after it starts.
async fn run_killed_after_revoke(bin: PathBuf, endpoints: String, id: u64) -> Run {
    let args = strings(&["lease", "keep-alive", &format!("{id:x}")]);
    let keep = {
        let (bin, endpoints, args) = (bin.clone(), endpoints.clone(), args.clone());
        tokio::spawn(async move { run(&bin, &endpoints, &args, "").await })
    };
    tokio::time::sleep(Duration::from_secs(1)).await;
    let revoke = strings(&["lease", "revoke", &format!("{id:x}")]);
    run(&oxcdctl_bin(), &endpoints, &revoke, "").await;
    keep.await.unwrap()
}

fn subst(args: &[String], ns: &str) -> Vec<String> {
    args.iter().map(|a| a.replace("{ns}", ns)).collect()
}

async fn watches(tools: &Tools) {
    for w in ["simple", "json", "fields", "protobuf"] {
        tools
            .same_watch(&["watch", "shared/", "--prefix", "--rev", "1", "-w", w], "")
            .await;
        tools
            .same_watch(
                &["watch", "shared/a", "--rev", "2", "--prev-kv", "-w", w],
                "",
            )
            .await;
    }
    tools
        .same_watch(&["watch", "shared/a", "shared/c", "--rev", "1"], "")
        .await;
    tools
        .same_watch(
            &["watch", "-i"],
            "watch shared/ --prefix --rev 3 --prev-kv\n",
        )
        .await;
    let exec =
        "echo \"$ETCD_WATCH_REVISION $ETCD_WATCH_EVENT_TYPE $ETCD_WATCH_KEY $ETCD_WATCH_VALUE\"";
    tools
        .same_watch(
            &[
                "watch", "shared/", "--prefix", "--rev", "1", "--", "sh", "-c", exec,
            ],
            "",
        )
        .await;
}

/// After a compaction, reading or watching below it fails the same way.
async fn compaction(tools: &Tools) {
    let current = run(
        &tools.oxcdctl,
        &tools.endpoints,
        &strings(&["get", "shared/a", "-w", "json"]),
        "",
    )
    .await;
    let json: serde_json::Value = serde_json::from_str(&current.stdout).unwrap();
    let revision = json["header"]["revision"].as_i64().unwrap();
    // Each tool compacts once (etcdctl one revision lower), then both repeat oxcdctl's.
    let (e_rev, o_rev) = ((revision - 2).to_string(), (revision - 1).to_string());
    let e = run(
        &tools.etcdctl,
        &tools.endpoints,
        &strings(&["compaction", &e_rev]),
        "",
    )
    .await;
    let o = run(
        &tools.oxcdctl,
        &tools.endpoints,
        &strings(&["compaction", &o_rev, "--physical"]),
        "",
    )
    .await;
    assert_eq!(e.stdout, format!("compacted revision {e_rev}\n"), "{e:?}");
    assert_eq!(o.stdout, format!("compacted revision {o_rev}\n"), "{o:?}");
    tools.same(&["compaction", &o_rev]).await;
    let again = tools.same(&["compaction", "2", "--physical"]).await;
    assert_eq!(again.code, Some(1));
    tools.same(&["get", "shared/a", "--rev", "2"]).await;
    for w in ["simple", "json"] {
        let watch = tools
            .same(&["watch", "shared/a", "--rev", "2", "-w", w])
            .await;
        assert_eq!(watch.code, Some(5), "{watch:?}");
    }
}

async fn unreachable(tools: &Tools) {
    let nowhere = Tools {
        endpoints: format!("127.0.0.1:{}", free_port()),
        etcdctl: tools.etcdctl.clone(),
        oxcdctl: tools.oxcdctl.clone(),
    };
    for args in [
        vec!["get", "a", "--command-timeout=1s"],
        vec!["put", "a", "b", "--command-timeout=1s"],
        vec!["member", "list", "--command-timeout=1s"],
    ] {
        let run = nowhere.same(&args).await;
        assert_eq!(run.stderr, "Error: context deadline exceeded\n");
    }
    let health = nowhere
        .same(&["endpoint", "health", "--command-timeout=1s"])
        .await;
    assert_eq!(health.code, Some(1));
}

#[tokio::test]
async fn oxcdctl_prints_what_etcdctl_prints_against_etcd() {
    require_etcd();
    let etcd = Server::start(Flavor::Etcd).await;
    let tools = Tools::new(&[etcd.endpoint()]);
    seed_shared(&tools).await;
    read_only_kv(&tools).await;
    bad_input(&tools).await;
    mutations(&tools).await;
    leases(&tools).await;
    watches(&tools).await;
    compaction(&tools).await;
    unreachable(&tools).await;
    for w in ["simple", "json", "table", "protobuf"] {
        tools.same(&["alarm", "disarm", "-w", w]).await;
    }
    tools.same(&["defrag"]).await;
    environment(&tools).await;
    auth(&tools).await;
}

/// Global flags from `ETCDCTL_*` variables, and etcdctl's refusal of a variable that a flag
/// also sets (its log line starts with a timestamp, which is not compared).
async fn environment(tools: &Tools) {
    for env in [
        vec![("ETCDCTL_WRITE_OUT", "json")],
        vec![("ETCDCTL_HEX", "true")],
        vec![
            ("ETCDCTL_WRITE_OUT", "fields"),
            ("ETCDCTL_COMMAND_TIMEOUT", "3s"),
        ],
        vec![("ETCDCTL_ENDPOINTS", "127.0.0.1:1")],
        vec![("ETCDCTL_WATCH_KEY", "shared/a"), ("ETCDCTL_BOGUS", "1")],
    ] {
        let args = strings(&["get", "shared/a"]);
        let expected = run_with_env(&tools.etcdctl, &tools.endpoints, &args, "", &env).await;
        let actual = run_with_env(&tools.oxcdctl, &tools.endpoints, &args, "", &env).await;
        let untimed = |r: &Run| {
            let stderr: String = r
                .stderr
                .lines()
                .map(|l| {
                    l.split_once(" | pkg/flags")
                        .map_or(l, |(_, m)| m)
                        .to_string()
                        + "\n"
                })
                .collect();
            (r.stdout.clone(), stderr, r.code)
        };
        assert_eq!(untimed(&actual), untimed(&expected), "{env:?}");
    }
}

/// `--user name:password` and `--user name --password password` against an etcd with auth on.
async fn auth(tools: &Tools) {
    for args in [
        vec!["user", "add", "root:pw"],
        vec!["user", "grant-role", "root", "root"],
        vec!["auth", "enable"],
    ] {
        let done = run(&tools.etcdctl, &tools.endpoints, &strings(&args), "").await;
        assert_eq!(done.code, Some(0), "etcdctl {args:?}: {done:?}");
    }
    for args in [
        vec!["get", "shared/a", "--user", "root:pw"],
        vec![
            "get",
            "shared/",
            "--prefix",
            "--user=root",
            "--password=pw",
            "-w",
            "json",
        ],
        vec!["get", "shared/a", "--user", "root:wrong"],
        vec!["get", "shared/a", "--user", "nobody:pw"],
        vec!["get", "shared/a"],
        vec!["member", "list", "--user", "root:pw"],
    ] {
        tools.same(&args).await;
    }
    tools
        .parallel(
            &["put", "{ns}authed", "x", "--user", "root:pw", "-w", "json"],
            "",
            &Normalise::default(),
        )
        .await;
    let (e, o) = tools
        .parallel_unchecked(&["endpoint", "health", "--user", "root:pw"], "")
        .await;
    assert_eq!(strip_took(e), strip_took(o), "endpoint health with auth");
}

/// Member, endpoint and leadership commands on a 3-member etcd cluster.
#[tokio::test]
async fn oxcdctl_prints_what_etcdctl_prints_for_a_cluster() {
    require_etcd();
    let cluster = Cluster::start(Flavor::Etcd, 3, &[]).await;
    let endpoints = cluster.endpoints();
    // Through one endpoint, so the same member answers both tools (the Go client balances
    // calls over all endpoints); --cluster and move-leader still visit every member.
    let tools = Tools::new(&endpoints[..1]);
    let all = Tools::new(&endpoints);
    for w in FORMATS {
        tools.same(&["member", "list", "-w", w]).await;
        tools
            .same(&["endpoint", "hashkv", "--cluster", "-w", w])
            .await;
        let status = Normalise::default();
        let (e, o) = tools
            .parallel_unchecked(&["endpoint", "status", "--cluster", "-w", w], "")
            .await;
        assert_same_normalised(
            &["endpoint", "status"],
            &strip_raft_index(e),
            &strip_raft_index(o),
            &status,
        );
    }
    for w in ["simple", "json", "fields"] {
        let (e, o) = tools
            .parallel_unchecked(&["endpoint", "health", "-w", w], "")
            .await;
        assert_eq!(strip_took(e), strip_took(o), "endpoint health -w {w}");
    }
    tools.same(&["defrag", "--cluster"]).await;

    // Add, then remove, a member: etcdctl first, then oxcdctl with the same name. etcd derives
    // a new member's id from its peer URLs and the time, so each tool adds its own URL.
    for (w, learner) in [
        ("simple", false),
        ("json", true),
        ("fields", false),
        ("protobuf", false),
    ] {
        let (e_peer, o_peer) = (
            format!("http://127.0.0.1:{}", free_port()),
            format!("http://127.0.0.1:{}", free_port()),
        );
        let args_for = |peer: &str| {
            let mut args = strings(&["member", "add", "extra", "-w", w]);
            args.push(format!("--peer-urls={peer}"));
            if learner {
                args.push("--learner".into());
            }
            args
        };
        let e_args = args_for(&e_peer);
        let expected = tools.add_member_when_healthy(&e_args).await;
        let e_id = added_member_id(&tools, &expected).await;
        let remove = strings(&["member", "remove", &format!("{e_id:x}")]);
        let e_removed = run(&tools.etcdctl, &tools.endpoints, &remove, "").await;
        let actual = run(&tools.oxcdctl, &tools.endpoints, &args_for(&o_peer), "").await;
        let o_id = added_member_id(&tools, &actual).await;
        let remove = strings(&["member", "remove", &format!("{o_id:x}")]);
        let o_removed = run(&tools.oxcdctl, &tools.endpoints, &remove, "").await;
        let ids = Normalise::default()
            .numeric_id(e_id, o_id, "MEMBER")
            .id(&e_peer, &o_peer, "PEER");
        let args: Vec<&str> = e_args.iter().map(String::as_str).collect();
        // Protobuf output is binary: ids are varints there, so only the exit status compares.
        if w == "protobuf" {
            assert_eq!(
                (actual.code, &actual.stderr),
                (expected.code, &expected.stderr)
            );
        } else {
            let (expected, actual) = (
                sort_members(expected, &ids, true),
                sort_members(actual, &ids, false),
            );
            assert_same_normalised(&args, &expected, &actual, &ids);
        }
        assert_same_normalised(&["member", "remove"], &e_removed, &o_removed, &ids);
    }
    // Updating a member to its own peer URL changes nothing, so both print the same.
    let members = run(
        &tools.oxcdctl,
        &tools.endpoints,
        &strings(&["member", "list", "-w", "json"]),
        "",
    )
    .await;
    let members: serde_json::Value = serde_json::from_str(&members.stdout).unwrap();
    let first = &members["members"][0];
    let id = format!("{:x}", first["ID"].as_u64().unwrap());
    let url = format!("--peer-urls={}", first["peerURLs"][0].as_str().unwrap());
    for w in ["simple", "json", "protobuf"] {
        tools.same(&["member", "update", &id, &url, "-w", w]).await;
    }
    tools.same(&["member", "promote", &id]).await;
    tools.same(&["member", "remove", "1234"]).await;

    // Leadership: etcdctl moves it to a follower and back, then oxcdctl makes the same move.
    let leader = cluster.wait_for_leader(Duration::from_secs(10)).await;
    let leader_id = cluster.member_id(leader).await;
    let follower = (leader + 1) % 3;
    let follower_id = format!("{:x}", cluster.member_id(follower).await);
    let moved = all
        .same_leader_move(&follower_id, &format!("{leader_id:x}"))
        .await;
    assert!(
        moved.stdout.starts_with("Leadership transferred from"),
        "{moved:?}"
    );
    let only_follower = Tools {
        endpoints: endpoints[follower].clone(),
        etcdctl: tools.etcdctl.clone(),
        oxcdctl: tools.oxcdctl.clone(),
    };
    only_follower.same(&["move-leader", &follower_id]).await;
}

impl Tools {
    /// etcdctl's `member add`, retried while etcd refuses it for a cluster that has not been
    /// fully connected for long enough (its reconfiguration safety check).
    async fn add_member_when_healthy(&self, args: &[String]) -> Run {
        for _ in 0..20 {
            let added = run(&self.etcdctl, &self.endpoints, args, "").await;
            if !added.stderr.contains("unhealthy cluster") {
                return added;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        panic!("etcd kept refusing {args:?} as an unhealthy cluster")
    }

    /// etcdctl moves leadership to `target` and back to `leader`; oxcdctl then moves it to
    /// `target`, printing the same line.
    async fn same_leader_move(&self, target: &str, leader: &str) -> Run {
        let args = strings(&["move-leader", target]);
        let expected = run(&self.etcdctl, &self.endpoints, &args, "").await;
        let back = run(
            &self.etcdctl,
            &self.endpoints,
            &strings(&["move-leader", leader]),
            "",
        )
        .await;
        assert_eq!(back.code, Some(0), "{back:?}");
        let actual = run(&self.oxcdctl, &self.endpoints, &args, "").await;
        assert_eq!(actual, expected, "move-leader");
        expected
    }
}

/// The id of the one member that was added but never started (it has no name yet). Member
/// lists are served from the member's own state, which may not have applied the addition yet.
async fn added_member_id(tools: &Tools, added: &Run) -> u64 {
    for _ in 0..50 {
        let list = run(
            &tools.oxcdctl,
            &tools.endpoints,
            &strings(&["member", "list", "-w", "json"]),
            "",
        )
        .await;
        let json: serde_json::Value = serde_json::from_str(&list.stdout).unwrap();
        let unstarted = json["members"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m.get("name").is_none())
            .and_then(|m| m["ID"].as_u64());
        if let Some(id) = unstarted {
            return id;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!(
        "no unstarted member after {added:?} (tools {})",
        tools.endpoints
    )
}

/// etcd lists members by id, so a new member's place differs with its id: sort the members
/// of `member add` output by name (the new member has none yet) before comparing.
fn sort_members(mut run: Run, ids: &Normalise, by_etcdctl: bool) -> Run {
    let lines: Vec<String> = run
        .stdout
        .lines()
        .map(|line| {
            if let Ok(mut json) = serde_json::from_str::<serde_json::Value>(line) {
                if let Some(members) = json["members"].as_array_mut() {
                    members.sort_by_key(|m| m["name"].as_str().unwrap_or("").to_string());
                }
                return json.to_string();
            }
            let line = ids.apply(line, by_etcdctl);
            if let Some(list) = line
                .strip_prefix("ETCD_INITIAL_CLUSTER=\"")
                .and_then(|l| l.strip_suffix('"'))
            {
                let mut entries: Vec<&str> = list.split(',').collect();
                entries.sort();
                return format!("ETCD_INITIAL_CLUSTER=\"{}\"", entries.join(","));
            }
            line
        })
        .collect();
    run.stdout = lines.join("\n");
    run
}

/// Raft indexes move between two status calls even on an idle cluster.
fn strip_raft_index(mut run: Run) -> Run {
    let mut lines = Vec::new();
    for line in run.stdout.lines() {
        if let Ok(mut json) = serde_json::from_str::<serde_json::Value>(line) {
            for status in json.as_array_mut().into_iter().flatten() {
                if let Some(s) = status["Status"].as_object_mut() {
                    s.remove("raftIndex");
                    s.remove("raftAppliedIndex");
                }
            }
            lines.push(json.to_string());
        } else if line.starts_with("\"RaftIndex\"") || line.starts_with("\"RaftAppliedIndex\"") {
            lines.push("index".into());
        } else if line.starts_with('|') || line.contains(", ") {
            // simple and table rows: endpoint, ID, version, db size, leader, learner, term,
            // index, applied index, errors.
            let sep = if line.starts_with('|') { '|' } else { ',' };
            let mut cells: Vec<&str> = line.split(sep).collect();
            let offset = usize::from(sep == '|');
            if cells.len() > 8 + offset && !line.contains("RAFT INDEX") {
                cells[7 + offset] = "index";
                cells[8 + offset] = "index";
            }
            lines.push(cells.join(&sep.to_string()));
        } else {
            lines.push(line.to_string());
        }
    }
    run.stdout = lines.join("\n");
    run
}

/// Health checks report how long they took.
fn strip_took(mut run: Run) -> Run {
    let strip = |text: &str| -> String {
        text.lines()
            .map(|line| {
                if let Some((head, _)) = line.split_once("took = ") {
                    return format!("{head}took = T");
                }
                if line.starts_with("\"Took\" : ") {
                    return "\"Took\" : T".into();
                }
                if let Ok(mut json) = serde_json::from_str::<serde_json::Value>(line) {
                    for h in json.as_array_mut().into_iter().flatten() {
                        h["took"] = "T".into();
                    }
                    return json.to_string();
                }
                line.to_string()
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    run.stdout = strip(&run.stdout);
    run.stderr = strip(&run.stderr);
    run
}

/// etcdctl and oxcdctl against oxcd: the same commands print the same there too.
#[tokio::test]
async fn oxcdctl_prints_what_etcdctl_prints_against_oxcd() {
    let oxcd = Server::start(Flavor::Oxcd).await;
    let tools = Tools::new(&[oxcd.endpoint()]);
    seed_shared(&tools).await;
    read_only_kv(&tools).await;
    mutations(&tools).await;
    leases(&tools).await;
    watches(&tools).await;
    compaction(&tools).await;
    tools.same(&["member", "list"]).await;
    tools.same(&["member", "list", "-w", "table"]).await;
    let (e, o) = tools.parallel_unchecked(&["endpoint", "health"], "").await;
    assert_eq!(strip_took(e), strip_took(o), "endpoint health");
}

/// The TLS flags against etcd serving https:// with client certificates required.
#[tokio::test]
async fn oxcdctl_prints_what_etcdctl_prints_over_tls() {
    require_etcd();
    let dir = tempfile::tempdir().unwrap();
    oxcd_tests::certs::make_certificates(dir.path());
    let member = oxcd_tests::certs::TlsMember::start(&oxcd_tests::etcd_bin(), dir.path());
    let tools = Tools::new(std::slice::from_ref(&member.endpoint));
    let file = |name: &str| dir.path().join(name).display().to_string();
    let (ca, cert, key) = (
        format!("--cacert={}", file("ca.crt")),
        format!("--cert={}", file("client.crt")),
        format!("--key={}", file("client.key")),
    );
    let mut ready = false;
    for _ in 0..100 {
        let put = ["put", "tls/k", "v", &ca, &cert, &key];
        if run(&tools.etcdctl, &tools.endpoints, &strings(&put), "")
            .await
            .code
            == Some(0)
        {
            ready = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(ready, "etcd never answered over TLS");
    for args in [
        vec!["get", "tls/k", &ca, &cert, &key],
        vec!["get", "tls/", "--prefix", "-w", "json", &ca, &cert, &key],
        vec!["member", "list", &ca, &cert, &key],
        vec!["get", "tls/k", "--insecure-skip-tls-verify", &cert, &key],
        // Refused without a client certificate or without trusting the server's CA.
        vec!["get", "tls/k", &ca, "--command-timeout=1s"],
        vec!["get", "tls/k", &cert, &key, "--command-timeout=1s"],
        vec!["get", "tls/k", "--cert="],
    ] {
        tools.same(&args).await;
    }
    let plain = Tools::new(&[format!("127.0.0.1:{}", member.client_port)]);
    plain.same(&["get", "tls/k", &ca, &cert, &key]).await;
    plain
        .same(&[
            "get",
            "tls/k",
            "--insecure-transport=false",
            "--insecure-skip-tls-verify",
            &cert,
            &key,
        ])
        .await;
}
