//! The real Kubernetes control plane (kube-apiserver, kube-controller-manager, kube-scheduler and
//! kubectl v1.37.2) on a 3-member cluster laid out as kubeadm lays out etcd: certificates from
//! `oxcdctl pki init`, https:// client and peer URLs with certificates required, and the
//! apiserver on all three members with its `apiserver-etcd-client` certificate. A kubelet
//! simulated here renews its node's Lease, marks the pods bound to it Running and finishes their
//! deletion, as a kubelet does.
//!
//! The seeds' pod-creation flow runs end to end (a Deployment's ReplicaSet and Pods made by the
//! controllers, bound by the scheduler, run by the kubelet), and the store's leader is killed in
//! the middle: scaling, a watch, a replaced pod, chunked lists, namespace deletion, garbage
//! collection and a list at a compacted resourceVersion (410) all go on, with no kubectl call
//! failing more than once and no object lost. The same body runs on 3 etcd 3.7 members first,
//! as calibration.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use oxcd_tests::certs::{pki_init, start_tls_cluster, TlsClusterMember};
use oxcd_tests::kube::{eventually, register_node, test_dir, ApiServer, Kubectl, NODE};
use oxcd_tests::Flavor;

const NAMESPACE: &str = "shop";
const DOOMED_NAMESPACE: &str = "doomed";
const SETTLE: Duration = Duration::from_secs(120);
/// How often the simulated kubelet looks at its pods and renews its Lease.
const KUBELET_TICK: Duration = Duration::from_secs(1);

/// etcd 3.7's etcdctl over TLS with kubeadm's health-check client certificate.
fn etcdctl(pki: &Path, endpoints: &str, args: &[&str]) -> Output {
    Command::new(oxcd_tests::etcd37_bin().with_file_name("etcdctl"))
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", pki.join("ca.crt").display()))
        .arg(format!(
            "--cert={}",
            pki.join("healthcheck-client.crt").display()
        ))
        .arg(format!(
            "--key={}",
            pki.join("healthcheck-client.key").display()
        ))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .expect("etcd 3.7's etcdctl")
}

/// `endpoint status` of each endpoint that answers: (index in `members`, member id, leader id,
/// revision).
fn statuses(pki: &Path, members: &[TlsClusterMember]) -> Vec<(usize, u64, u64, i64)> {
    let mut seen = Vec::new();
    for (i, m) in members.iter().enumerate() {
        let out = etcdctl(pki, &m.endpoint(), &["endpoint", "status", "-w", "json"]);
        if !out.status.success() {
            continue;
        }
        let parsed: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let status = &parsed[0]["Status"];
        seen.push((
            i,
            status["header"]["member_id"].as_u64().unwrap(),
            status["leader"].as_u64().unwrap(),
            status["header"]["revision"].as_i64().unwrap(),
        ));
    }
    seen
}

/// The leader, once a quorum of members answers and every member that answers names it.
fn leader(pki: &Path, members: &[TlsClusterMember]) -> usize {
    eventually("a leader the members agree on", SETTLE, || {
        let seen = statuses(pki, members);
        let leader = seen.iter().find(|s| s.1 == s.2)?;
        (seen.len() > members.len() / 2 && seen.iter().all(|s| s.2 == leader.1)).then_some(leader.0)
    })
}

/// A kubelet as far as the control plane can tell: it renews its node's Lease, reports the pods
/// bound to its node Running and Ready, and deletes (grace 0) pods being deleted, as a kubelet
/// does once their containers stopped. Errors (the store changing leader) wait for the next tick.
struct Kubelet {
    stop: Arc<AtomicBool>,
    errors: Arc<AtomicUsize>,
    thread: Option<JoinHandle<()>>,
}

impl Kubelet {
    fn start(kubectl: Kubectl) -> Kubelet {
        let stop = Arc::new(AtomicBool::new(false));
        let errors = Arc::new(AtomicUsize::new(0));
        let thread = {
            let (stop, errors) = (stop.clone(), errors.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if !Kubelet::tick(&kubectl) {
                        errors.fetch_add(1, Ordering::Relaxed);
                    }
                    std::thread::sleep(KUBELET_TICK);
                }
            })
        };
        Kubelet {
            stop,
            errors,
            thread: Some(thread),
        }
    }

    /// One round; false if a call failed.
    fn tick(kubectl: &Kubectl) -> bool {
        let now = Command::new("date")
            .args(["-u", "+%Y-%m-%dT%H:%M:%S.%6NZ"])
            .output()
            .unwrap();
        let now = String::from_utf8_lossy(&now.stdout).trim().to_string();
        let lease = serde_json::json!({
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": {"name": NODE, "namespace": "kube-node-lease"},
            "spec": {"holderIdentity": NODE, "leaseDurationSeconds": 40, "renewTime": now},
        });
        let mut ok = kubectl
            .with_manifest("apply", &lease)
            .contains("lease.coordination.k8s.io");
        let pods = kubectl.run(&[
            "get",
            "pods",
            "-A",
            &format!("--field-selector=spec.nodeName={NODE}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.namespace} {.metadata.name} {.status.phase} \
             {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        if !pods.status.success() {
            return false;
        }
        for line in String::from_utf8_lossy(&pods.stdout).lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let [namespace, name, phase, ref rest @ ..] = fields[..] else {
                continue;
            };
            let call = if !rest.is_empty() {
                kubectl.run(&[
                    "-n",
                    namespace,
                    "delete",
                    "pod",
                    name,
                    "--grace-period=0",
                    "--force",
                    "--ignore-not-found",
                ])
            } else if phase != "Running" {
                let status = format!(
                    r#"{{"status":{{"phase":"Running","startTime":"{now}","conditions":[{{"type":"Ready","status":"True","lastTransitionTime":"{now}"}}]}}}}"#
                );
                kubectl.run(&[
                    "-n",
                    namespace,
                    "patch",
                    "pod",
                    name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &status,
                ])
            } else {
                continue;
            };
            ok &= call.status.success();
        }
        ok
    }
}

impl Drop for Kubelet {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// A kubectl call that may fail once (a request in flight when the store's leader died); a
/// second failure fails the test. Returns stdout and whether it needed the retry.
fn with_one_retry(kubectl: &Kubectl, args: &[&str]) -> (String, bool) {
    let first = kubectl.run(args);
    if first.status.success() {
        return (String::from_utf8(first.stdout).unwrap(), false);
    }
    eprintln!(
        "kubectl {args:?} failed once: {}",
        String::from_utf8_lossy(&first.stderr).trim()
    );
    std::thread::sleep(Duration::from_secs(1));
    (kubectl.ok(args), true)
}

/// The names of the pods of `app` in `namespace` whose phase is Running, once there are exactly
/// `count` pods and all run.
fn running_pods(kubectl: &Kubectl, namespace: &str, app: &str, count: usize) -> BTreeSet<String> {
    eventually(&format!("{count} pods of {app} running"), SETTLE, || {
        let out = kubectl.run(&[
            "-n",
            namespace,
            "get",
            "pods",
            "-l",
            &format!("app={app}"),
            "-o",
            "jsonpath={range .items[*]}{.metadata.name} {.spec.nodeName} {.status.phase} \
                 {.metadata.deletionTimestamp}{\"\\n\"}{end}",
        ]);
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let pods: Vec<Vec<&str>> = text
            .lines()
            .map(|l| l.split_whitespace().collect())
            .collect();
        (out.status.success()
            && pods.len() == count
            && pods
                .iter()
                .all(|p| p.len() == 3 && p[1] == NODE && p[2] == "Running"))
        .then(|| pods.iter().map(|p| p[0].to_string()).collect())
    })
}

/// Keys under `prefix`, read through a live member.
fn stored_keys(pki: &Path, endpoint: &str, prefix: &str) -> Vec<String> {
    let out = etcdctl(pki, endpoint, &["get", prefix, "--prefix", "--keys-only"]);
    assert!(out.status.success(), "{out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect()
}

async fn control_plane_on_three_members(flavor: Flavor) {
    let started = Instant::now();
    let dir = test_dir();
    let pki = dir.path().join("pki");
    pki_init(&pki, 3);
    let mut members = start_tls_cluster(&flavor.binary(), &pki, &dir.path().join("data"), 3, &[]);
    let endpoints = members
        .iter()
        .map(TlsClusterMember::endpoint)
        .collect::<Vec<_>>()
        .join(",");
    let first_leader = leader(&pki, &members);
    let file = |name: &str| pki.join(name).display().to_string();
    let apiserver = ApiServer::start_ready(
        &endpoints,
        dir.path(),
        &[
            &format!("--etcd-cafile={}", file("ca.crt")),
            &format!("--etcd-certfile={}", file("apiserver-etcd-client.crt")),
            &format!("--etcd-keyfile={}", file("apiserver-etcd-client.key")),
            // ConfigMaps uncached, so that their lists reach the store (the watch cache would
            // answer a list at an old resourceVersion from its own history).
            "--watch-cache-sizes=configmaps#0",
        ],
        &format!("{flavor} x3, TLS"),
    );
    let _controller_manager = apiserver.start_component("kube-controller-manager", &[]);
    let _scheduler = apiserver.start_component("kube-scheduler", &[]);
    let kubectl = apiserver.kubectl();
    register_node(&kubectl, dir.path());
    let kubelet = Kubelet::start(apiserver.kubectl());

    // The seeds' flow: Deployment -> ReplicaSet -> Pods -> bound -> Running.
    kubectl.ok(&["create", "namespace", NAMESPACE]);
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "deployment",
        "web",
        "--image=registry.invalid/web:1",
        "--replicas=3",
    ]);
    let first_pods = running_pods(&kubectl, NAMESPACE, "web", 3);
    eprintln!(
        "[{flavor}] 3 pods created, bound and running {:.1}s after start",
        started.elapsed().as_secs_f64()
    );
    let (_watch, watched) = kubectl.stream(&[
        "-n",
        NAMESPACE,
        "get",
        "pods",
        "--watch",
        "--request-timeout=600s",
        "-o",
        "name",
    ]);

    // The store's leader dies in the middle of the work.
    members[first_leader].kill();
    let killed_at = Instant::now();
    let mut retried = Vec::new();
    let (_, again) = with_one_retry(
        &kubectl,
        &[
            "-n",
            NAMESPACE,
            "scale",
            "deployment",
            "web",
            "--replicas=5",
        ],
    );
    if again {
        retried.push("scale");
    }
    let scaled = running_pods(&kubectl, NAMESPACE, "web", 5);
    eprintln!(
        "[{flavor}] leader m{first_leader} killed; scaled to 5 running pods {:.1}s later",
        killed_at.elapsed().as_secs_f64()
    );
    assert!(first_pods.is_subset(&scaled), "{first_pods:?} {scaled:?}");
    let live = members
        .iter()
        .enumerate()
        .find(|(i, _)| *i != first_leader)
        .unwrap()
        .1
        .endpoint();
    let new_leader = leader(&pki, &members);
    assert_ne!(new_leader, first_leader);

    // The watch opened before the kill saw the new pods.
    let deadline = Instant::now() + SETTLE;
    let mut seen = BTreeSet::new();
    while !scaled.iter().all(|p| seen.contains(&format!("pod/{p}"))) {
        let left = deadline.saturating_duration_since(Instant::now());
        match watched.recv_timeout(left) {
            Ok(line) => {
                seen.insert(line);
            }
            Err(e) => panic!("[{flavor}] the watch stopped seeing pods ({e}); saw {seen:?}"),
        }
    }

    // A pod gone is replaced.
    let victim = scaled.iter().next().unwrap().clone();
    let (_, again) = with_one_retry(
        &kubectl,
        &[
            "-n",
            NAMESPACE,
            "delete",
            "pod",
            &victim,
            "--grace-period=0",
            "--force",
        ],
    );
    if again {
        retried.push("delete pod");
    }
    let replaced = running_pods(&kubectl, NAMESPACE, "web", 5);
    assert!(!replaced.contains(&victim), "{victim} still listed");

    // Chunked lists, through the apiserver and its continue tokens.
    let (listed, again) = with_one_retry(
        &kubectl,
        &[
            "-n",
            NAMESPACE,
            "get",
            "pods",
            "--chunk-size=2",
            "-o",
            "name",
        ],
    );
    if again {
        retried.push("chunked list");
    }
    let listed: BTreeSet<String> = listed
        .lines()
        .map(|l| l.trim_start_matches("pod/").to_string())
        .collect();
    assert_eq!(listed, replaced);

    // Nothing lost: what kubectl lists is what the store holds.
    let stored_pods = stored_keys(&pki, &live, &format!("/registry/pods/{NAMESPACE}/"));
    assert_eq!(
        stored_pods,
        replaced
            .iter()
            .map(|p| format!("/registry/pods/{NAMESPACE}/{p}"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        stored_keys(&pki, &live, &format!("/registry/deployments/{NAMESPACE}/")),
        [format!("/registry/deployments/{NAMESPACE}/web")]
    );

    // A list at a resourceVersion the store has compacted away is 410 Gone (ConfigMaps are not
    // cached, see the apiserver's flags).
    let before: serde_json::Value = serde_json::from_str(&kubectl.ok(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NAMESPACE}/configmaps"),
    ]))
    .unwrap();
    let old_version = before["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string();
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "create",
        "configmap",
        "after",
        "--from-literal=k=v",
    ]);
    let revision = statuses(&pki, &members).iter().map(|s| s.3).max().unwrap();
    let compacted = etcdctl(&pki, &live, &["compact", &revision.to_string()]);
    assert!(compacted.status.success(), "{compacted:?}");
    let gone = kubectl.fails(&[
        "get",
        "--raw",
        &format!(
            "/api/v1/namespaces/{NAMESPACE}/configmaps?resourceVersion={old_version}&resourceVersionMatch=Exact&limit=1"
        ),
    ]);
    assert!(
        gone.contains("Expired") || gone.contains("410") || gone.contains("too old"),
        "[{flavor}] a list at compacted resourceVersion {old_version}: {gone}"
    );

    // Namespace deletion: the namespace controller removes everything in it, pods included
    // (the kubelet finishes their graceful deletion).
    kubectl.ok(&["create", "namespace", DOOMED_NAMESPACE]);
    kubectl.ok(&[
        "-n",
        DOOMED_NAMESPACE,
        "create",
        "configmap",
        "c",
        "--from-literal=k=v",
    ]);
    kubectl.ok(&[
        "-n",
        DOOMED_NAMESPACE,
        "create",
        "deployment",
        "tmp",
        "--image=registry.invalid/tmp:1",
    ]);
    running_pods(&kubectl, DOOMED_NAMESPACE, "tmp", 1);
    kubectl.ok(&["delete", "namespace", DOOMED_NAMESPACE, "--wait=false"]);
    eventually("the namespace gone", SETTLE, || {
        let out = kubectl.run(&["get", "namespace", DOOMED_NAMESPACE]);
        (!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"))
            .then_some(())
    });
    for resource in ["configmaps", "pods", "replicasets", "deployments"] {
        assert_eq!(
            stored_keys(
                &pki,
                &live,
                &format!("/registry/{resource}/{DOOMED_NAMESPACE}/")
            ),
            Vec::<String>::new(),
            "[{flavor}] {resource} left behind"
        );
    }

    // Garbage collection: deleting the Deployment takes its ReplicaSet and Pods with it.
    kubectl.ok(&[
        "-n",
        NAMESPACE,
        "delete",
        "deployment",
        "web",
        "--wait=false",
    ]);
    eventually("the Deployment's dependents collected", SETTLE, || {
        let pods = stored_keys(&pki, &live, &format!("/registry/pods/{NAMESPACE}/"));
        let sets = stored_keys(&pki, &live, &format!("/registry/replicasets/{NAMESPACE}/"));
        (pods.is_empty() && sets.is_empty()).then_some(())
    });

    let kubelet_errors = kubelet.errors.load(Ordering::Relaxed);
    drop(kubelet);
    eprintln!(
        "[{flavor}] control plane on 3 TLS members, leader killed: done in {:.1}s; kubectl \
         calls retried once: {retried:?}; kubelet rounds with a failed call: {kubelet_errors}",
        started.elapsed().as_secs_f64()
    );
}

#[tokio::test]
async fn the_control_plane_runs_on_three_tls_members_through_a_leader_kill() {
    for flavor in [Flavor::Etcd37, Flavor::Oxcd] {
        control_plane_on_three_members(flavor).await;
    }
}
