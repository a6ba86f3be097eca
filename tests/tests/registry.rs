//! `oxcdctl registry` reading a store that holds Kubernetes objects exactly as kube-apiserver
//! writes them (tests/fixtures/registry, made by its Go generator with Kubernetes' own
//! serializer), against etcd first and then oxcd.

use std::path::PathBuf;

use etcd_client::{Txn, TxnOp};
use serde_json::Value;

use oxcd_tests::{for_both, oxcdctl_bin, Target};

/// More objects than `registry` reads per page (500).
const BULK: usize = 1200;

fn fixtures_dir() -> PathBuf {
    oxcd_tests::package_dir().join("fixtures/registry")
}

/// (key, file name, value) in the generator's order, which is the order they are written in.
fn fixtures() -> Vec<(String, String, Vec<u8>)> {
    let manifest =
        std::fs::read_to_string(fixtures_dir().join("manifest.tsv")).expect("manifest.tsv");
    manifest
        .lines()
        .map(|line| {
            let (key, file) = line.split_once('\t').expect("key<TAB>file");
            let value = std::fs::read(fixtures_dir().join(file)).expect("fixture file");
            (key.to_string(), file.to_string(), value)
        })
        .collect()
}

struct Run {
    code: i32,
    stdout: String,
    stderr: String,
}

async fn oxcdctl(target: &Target, args: &[&str]) -> Run {
    let output = tokio::process::Command::new(oxcdctl_bin())
        .arg("--endpoints")
        .arg(&target.endpoint)
        .args(args)
        .output()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot run {} (build it with `cargo build -p oxcdctl`): {e}",
                oxcdctl_bin().display()
            )
        });
    Run {
        code: output.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
    }
}

/// Runs a command that must succeed and returns its standard output.
async fn ok(target: &Target, args: &[&str]) -> String {
    let run = oxcdctl(target, args).await;
    assert_eq!(run.code, 0, "oxcdctl {args:?} failed: {}", run.stderr);
    run.stdout
}

async fn json(target: &Target, args: &[&str]) -> Value {
    let text = ok(target, args).await;
    serde_json::from_str(&text)
        .unwrap_or_else(|e| panic!("oxcdctl {args:?} printed no JSON ({e}):\n{text}"))
}

/// The table row whose first cells are `cells`, split on runs of spaces.
fn row<'t>(table: &'t str, cells: &[&str]) -> Vec<&'t str> {
    table
        .lines()
        .map(|line| {
            line.split("   ")
                .map(str::trim)
                .filter(|c| !c.is_empty())
                .collect::<Vec<_>>()
        })
        .find(|row| row.starts_with(cells))
        .unwrap_or_else(|| panic!("no row starting {cells:?} in:\n{table}"))
}

#[tokio::test]
async fn registry_commands_read_kubernetes_objects() {
    for_both(|target| async move {
        let mut client = target.client.clone();
        let mut revisions = Vec::new();
        for (key, file, value) in fixtures() {
            let put = client.put(key, value, None).await.expect("put fixture");
            revisions.push((file, put.header().expect("header").revision()));
        }
        // Enough ConfigMaps in one namespace that listing them takes several pages.
        let config_map = std::fs::read(fixtures_dir().join("configmap-cluster-info.bin")).unwrap();
        for batch in 0..BULK / 100 {
            let puts = (0..100).map(|i| {
                let key = format!("/registry/configmaps/bulk/cm-{:04}", batch * 100 + i);
                TxnOp::put(key, config_map.clone(), None)
            });
            client
                .txn(Txn::new().and_then(puts.collect::<Vec<_>>()))
                .await
                .expect("bulk put");
        }
        let revision_of = |file: &str| {
            revisions
                .iter()
                .find(|(f, _)| f == file)
                .map(|(_, r)| r.to_string())
                .unwrap()
        };

        // The plain etcdctl view works on a Kubernetes store too (binary values and all).
        let keys = ok(&target, &["get", "/registry", "--prefix", "--keys-only"]).await;
        assert!(
            keys.lines().any(|l| l == "/registry/pods/default/web-1"),
            "{keys}"
        );

        // Every resource, found from the keys, with kube-apiserver's storage paths.
        let all = ok(&target, &["registry", "ls"]).await;
        assert_eq!(
            row(&all, &["pods"]),
            ["pods", "/registry/pods/", "1", "549"]
        );
        assert_eq!(
            row(&all, &["nodes"]),
            ["nodes", "/registry/minions/", "1", "391"]
        );
        assert_eq!(
            row(&all, &["services"]),
            ["services", "/registry/services/specs/", "1", "190"]
        );
        assert_eq!(row(&all, &["secrets"])[2], "2");
        assert_eq!(
            row(&all, &["widgets.example.com"])[1],
            "/registry/example.com/widgets/"
        );
        assert_eq!(
            row(&all, &["customresourcedefinitions"])[1],
            "/registry/apiextensions.k8s.io/customresourcedefinitions/"
        );
        assert_eq!(row(&all, &["leases"])[2], "1");
        assert_eq!(row(&all, &["configmaps"])[2], (BULK + 1).to_string());
        assert_eq!(row(&all, &["TOTAL"])[1], (BULK + 11).to_string());
        let bulk = ok(&target, &["registry", "ls", "cm", "-n", "bulk"]).await;
        assert_eq!(
            bulk.lines().count(),
            BULK + 1,
            "header and one row per object"
        );
        assert_eq!(row(&bulk, &["bulk", "cm-1199"])[2], "ConfigMap");

        let pods = ok(&target, &["registry", "ls", "po", "-n", "default"]).await;
        assert_eq!(
            row(&pods, &["default", "web-1"]),
            [
                "default",
                "web-1",
                "Pod",
                "549",
                &revision_of("pod-web-1.bin")
            ]
        );
        let secrets = ok(&target, &["registry", "ls", "secrets"]).await;
        assert_eq!(
            row(&secrets, &["kube-system", "encrypted"])[2],
            "(encrypted: aescbc key1)"
        );
        assert_eq!(row(&secrets, &["default", "db-creds"])[2], "Secret");
        let nodes = ok(&target, &["registry", "ls", "nodes"]).await;
        assert_eq!(row(&nodes, &["-", "node-1"])[2], "Node");

        // Objects decode to exactly what kubectl shows.
        let pod = json(
            &target,
            &[
                "registry", "get", "pods", "web-1", "-n", "default", "-o", "json",
            ],
        )
        .await;
        assert_eq!(pod["apiVersion"], "v1");
        assert_eq!(pod["kind"], "Pod");
        assert_eq!(pod["spec"]["containers"][0]["image"], "nginx:1.27");
        assert_eq!(
            pod["spec"]["containers"][0]["resources"]["limits"]["memory"],
            "128Mi"
        );
        let kubectl: Value = serde_json::from_slice(
            &std::fs::read(fixtures_dir().join("pod-web-1.kubectl.json")).unwrap(),
        )
        .unwrap();
        assert_eq!(pod, kubectl);
        let yaml = ok(&target, &["registry", "get", "po", "web-1", "-o", "yaml"]).await;
        assert!(
            yaml.starts_with("apiVersion: v1\nkind: Pod\nmetadata:\n"),
            "{yaml}"
        );
        assert!(
            yaml.contains("\n  - image: nginx:1.27\n") || yaml.contains("    image: nginx:1.27\n"),
            "{yaml}"
        );
        let node = json(&target, &["registry", "get", "no", "node-1"]).await;
        assert_eq!(node["status"]["capacity"]["cpu"], "4");
        let service = json(&target, &["registry", "get", "svc", "web"]).await;
        assert_eq!(service["spec"]["ports"][0]["targetPort"], 8080);
        let deployment = json(&target, &["registry", "get", "deploy", "web"]).await;
        assert_eq!(deployment["apiVersion"], "apps/v1");
        assert_eq!(
            deployment["spec"]["strategy"]["rollingUpdate"]["maxSurge"],
            "25%"
        );
        let secret = json(&target, &["registry", "get", "secret", "db-creds"]).await;
        assert_eq!(secret["data"]["password"], "czNjcjN0");
        let widget = json(
            &target,
            &[
                "registry",
                "get",
                "widgets.example.com",
                "gizmo",
                "-n",
                "default",
            ],
        )
        .await;
        assert_eq!(widget["spec"]["color"], "blue");
        let crd = json(&target, &["registry", "get", "crd", "widgets.example.com"]).await;
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]["spec"];
        assert_eq!(
            schema["properties"]["extra"]["x-kubernetes-preserve-unknown-fields"],
            true
        );
        assert_eq!(schema["properties"]["color"]["default"], "blue");

        // Older revisions, and the history that walks them.
        let v1 = revision_of("deployment-web-v1.bin");
        let old = json(&target, &["registry", "get", "deploy", "web", "--rev", &v1]).await;
        assert_eq!(
            old["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.27"
        );
        assert_eq!(
            deployment["spec"]["template"]["spec"]["containers"][0]["image"],
            "nginx:1.28"
        );
        let history = ok(
            &target,
            &["registry", "history", "deployments", "web", "-n", "default"],
        )
        .await;
        let v2 = revision_of("deployment-web-v2.bin");
        assert_eq!(
            row(&history, &[&v2]),
            [&v2, "2", "282", "metadata.generation: 1 → 2"]
        );
        assert!(history.contains("spec.replicas: 2 → 3\n"), "{history}");
        assert!(
            history.contains(
                "spec.template.spec.containers[0].image: \"nginx:1.27\" → \"nginx:1.28\"\n"
            ),
            "{history}"
        );
        assert_eq!(row(&history, &[&v1]), [&v1, "1", "282", "created"]);

        // Encrypted and missing objects are reported, not garbled.
        let encrypted = oxcdctl(
            &target,
            &[
                "registry",
                "get",
                "secrets",
                "encrypted",
                "-n",
                "kube-system",
            ],
        )
        .await;
        assert_eq!(encrypted.code, 1);
        assert_eq!(encrypted.stdout, "");
        assert!(
            encrypted
                .stderr
                .contains("encrypted at rest (aescbc v1, key \"key1\")"),
            "{}",
            encrypted.stderr
        );
        let missing = oxcdctl(&target, &["registry", "get", "pods", "nope"]).await;
        assert_eq!(
            (missing.code, missing.stderr.as_str()),
            (
                1,
                "Error: pods \"nope\" not found (no key /registry/pods/default/nope)\n"
            )
        );

        // After a compaction, history stops at the compaction point and old reads fail as etcdctl's do.
        let now = client
            .get("compact-here", None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
        client.compact(now, None).await.expect("compact");
        let history = ok(&target, &["registry", "history", "deploy", "web"]).await;
        assert_eq!(
            row(&history, &[&v2]),
            [&v2, "2", "282", "(earlier revisions compacted)"]
        );
        assert_eq!(history.lines().count(), 2, "{history}");
        let compacted = oxcdctl(&target, &["registry", "get", "deploy", "web", "--rev", &v1]).await;
        assert_eq!(
            (compacted.code, compacted.stderr.as_str()),
            (
                1,
                "Error: etcdserver: mvcc: required revision has been compacted\n"
            )
        );
    })
    .await;
}
