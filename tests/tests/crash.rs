//! Durability and process-lifecycle tests of oxcd: acknowledged writes must survive SIGKILL,
//! SIGTERM must shut down cleanly, and a data dir must not be opened by two members at once.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};
use oxcd_tests::{connect, run_expecting_exit, Flavor, MemberSpec, Server};
use rand::Rng;

const WRITERS: usize = 32;
const CYCLES: usize = 3;
/// A write that takes longer than this is treated as unacknowledged (the server is gone).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A write the server acknowledged, with the revision it reported.
#[derive(Clone, Debug)]
struct Ack {
    key: String,
    value: String,
    revision: i64,
}

/// Values are derived from keys, so any value found for a key can be checked for tearing even
/// when its write was never acknowledged.
fn value_for(key: &str) -> String {
    format!("value-of:{key}:{}", "x".repeat(key.len() % 17))
}

async fn writer(
    mut client: Client,
    prefix: String,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut report = WriterReport::default();
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        report.attempted += 1;
        // Every fourth write is a two-key txn, to check atomicity across the crash.
        let result = if seq % 4 == 3 {
            let a = format!("{prefix}/t{seq:06}/a");
            let b = format!("{prefix}/t{seq:06}/b");
            let txn = Txn::new()
                .when([Compare::version(a.clone(), CompareOp::Equal, 0)])
                .and_then([
                    TxnOp::put(a.clone(), value_for(&a), None),
                    TxnOp::put(b.clone(), value_for(&b), None),
                ]);
            match tokio::time::timeout(WRITE_TIMEOUT, client.txn(txn)).await {
                Ok(Ok(resp)) => {
                    assert!(
                        resp.succeeded(),
                        "fresh key {a} failed its version = 0 compare"
                    );
                    let revision = resp.header().expect("txn header").revision();
                    Some(vec![
                        Ack {
                            value: value_for(&a),
                            key: a,
                            revision,
                        },
                        Ack {
                            value: value_for(&b),
                            key: b,
                            revision,
                        },
                    ])
                }
                _ => None,
            }
        } else {
            let key = format!("{prefix}/p{seq:06}");
            match tokio::time::timeout(
                WRITE_TIMEOUT,
                client.put(key.clone(), value_for(&key), None),
            )
            .await
            {
                Ok(Ok(resp)) => {
                    let revision = resp.header().expect("put header").revision();
                    Some(vec![Ack {
                        value: value_for(&key),
                        key,
                        revision,
                    }])
                }
                _ => None,
            }
        };
        match result {
            Some(new_acks) => acks.lock().unwrap().extend(new_acks),
            // The server is dead or dying; stop instead of hammering a closed port.
            None => {
                report.interrupted = true;
                break;
            }
        }
    }
    report
}

#[derive(Default)]
struct WriterReport {
    attempted: usize,
    /// A write failed or timed out, i.e. the kill landed while this writer had one in flight.
    interrupted: bool,
}

/// Reads everything under `prefix` as key -> (value, mod_revision, create_revision), in pages
/// (a single response could exceed the client's 4 MiB message limit) pinned to one revision.
async fn read_prefix(
    client: &mut Client,
    prefix: &str,
) -> (i64, BTreeMap<String, (String, i64, i64)>) {
    let mut range_end = prefix.as_bytes().to_vec();
    *range_end.last_mut().expect("non-empty prefix") += 1;
    let mut from = prefix.as_bytes().to_vec();
    let mut snapshot = None;
    let mut map = BTreeMap::new();
    loop {
        let mut options = GetOptions::new()
            .with_range(range_end.clone())
            .with_limit(2000);
        if let Some(revision) = snapshot {
            options = options.with_revision(revision);
        }
        let resp = client
            .get(from.clone(), Some(options))
            .await
            .unwrap_or_else(|e| panic!("reading back {prefix}: {e}"));
        let revision = *snapshot.get_or_insert(resp.header().expect("range header").revision());
        for kv in resp.kvs() {
            map.insert(
                String::from_utf8_lossy(kv.key()).into_owned(),
                (
                    String::from_utf8_lossy(kv.value()).into_owned(),
                    kv.mod_revision(),
                    kv.create_revision(),
                ),
            );
        }
        match resp.kvs().last() {
            Some(last) if resp.more() => {
                from = last.key().to_vec();
                from.push(0);
            }
            _ => return (revision, map),
        }
    }
}

fn verify(all_acks: &[Ack], store: &BTreeMap<String, (String, i64, i64)>, context: &str) {
    let mut missing = Vec::new();
    let mut wrong = Vec::new();
    for ack in all_acks {
        match store.get(&ack.key) {
            None => missing.push(ack.clone()),
            Some((value, mod_revision, _)) => {
                if value != &ack.value || *mod_revision != ack.revision {
                    wrong.push((ack.clone(), value.clone(), *mod_revision));
                }
            }
        }
    }
    assert!(
        missing.is_empty() && wrong.is_empty(),
        "{context}: {} acknowledged writes lost, {} changed (of {}).\nfirst lost: {:#?}\nfirst changed \
         (ack, value found, mod_revision found): {:#?}",
        missing.len(),
        wrong.len(),
        all_acks.len(),
        missing.iter().take(5).collect::<Vec<_>>(),
        wrong.iter().take(5).collect::<Vec<_>>()
    );

    let by_key: HashMap<&str, &(String, i64, i64)> =
        store.iter().map(|(k, v)| (k.as_str(), v)).collect();
    for (key, (value, mod_revision, create_revision)) in store {
        assert_eq!(
            value,
            &value_for(key),
            "{context}: torn or foreign value under {key}"
        );
        assert_eq!(
            mod_revision, create_revision,
            "{context}: {key} was written once but has history"
        );
        if let Some(partner) = txn_partner_of(key) {
            let other = by_key.get(partner.as_str()).unwrap_or_else(|| {
                panic!("{context}: txn wrote {key} and {partner} together, but only {key} survived")
            });
            assert_eq!(
                other.1, *mod_revision,
                "{context}: {key} and {partner} came from one txn"
            );
        }
    }
}

fn txn_partner_of(key: &str) -> Option<String> {
    if let Some(base) = key.strip_suffix("/a") {
        Some(format!("{base}/b"))
    } else {
        key.strip_suffix("/b").map(|base| format!("{base}/a"))
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn acknowledged_writes_survive_sigkill_repeatedly() {
    let mut server = Server::start(Flavor::Oxcd).await;
    let mut rng = rand::thread_rng();
    let mut all_acks: Vec<Ack> = Vec::new();
    let mut max_acked_revision = 1;

    for cycle in 0..CYCLES {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..WRITERS {
            let client = connect(&server.endpoint(), WRITE_TIMEOUT).await.unwrap();
            tasks.push(tokio::spawn(writer(
                client,
                format!("crash/c{cycle}/w{w:02}"),
                acks.clone(),
                stop.clone(),
            )));
        }

        // Let the writers get going (some acks), then kill at a random point mid-stream.
        let started = Instant::now();
        while acks.lock().unwrap().len() < 100 {
            assert!(
                started.elapsed() < Duration::from_secs(20),
                "cycle {cycle}: writers got no acknowledgements in 20 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let delay = Duration::from_millis(rng.gen_range(100..1500));
        tokio::time::sleep(delay).await;
        let acked_before_kill = acks.lock().unwrap().len();
        server.kill();
        stop.store(true, Ordering::Relaxed);
        let (mut attempted, mut interrupted) = (0, 0);
        for task in tasks {
            let report = task.await.expect("writer task panicked");
            attempted += report.attempted;
            interrupted += usize::from(report.interrupted);
        }
        let cycle_acks = std::mem::take(&mut *acks.lock().unwrap());
        println!(
            "cycle {cycle}: killed after {delay:?} more; {attempted} writes attempted, {} keys \
             acknowledged ({acked_before_kill} seen before the kill), {interrupted} writers cut off",
            cycle_acks.len()
        );
        assert!(
            interrupted > 0,
            "cycle {cycle}: no write was in flight at the kill, so it did not land mid-stream"
        );
        if let Some(max) = cycle_acks.iter().map(|a| a.revision).max() {
            assert!(
                max > max_acked_revision,
                "cycle {cycle}: revisions went backwards across a restart"
            );
            max_acked_revision = max;
        }
        all_acks.extend(cycle_acks);

        server.restart().await;
        let mut client = server.client().await;
        let (revision, store) = read_prefix(&mut client, "crash/").await;
        assert!(
            revision >= max_acked_revision,
            "cycle {cycle}: after restart the store is at revision {revision}, below the acknowledged {max_acked_revision}"
        );
        verify(&all_acks, &store, &format!("after kill #{}", cycle + 1));

        let probe = client
            .put("crash-probe", "after-restart", None)
            .await
            .unwrap();
        let probe_revision = probe.header().unwrap().revision();
        assert!(
            probe_revision > revision,
            "cycle {cycle}: first write after restart got revision {probe_revision}, not above {revision}"
        );
        max_acked_revision = probe_revision;
    }
}

#[tokio::test]
async fn sigterm_exits_zero_and_keeps_written_data() {
    let mut server = Server::start(Flavor::Oxcd).await;
    let mut client = server.client().await;
    let mut last = 0;
    for i in 0..20 {
        last = client
            .put(format!("t/{i:02}"), format!("v{i}"), None)
            .await
            .unwrap()
            .header()
            .unwrap()
            .revision();
    }
    drop(client);

    let started = Instant::now();
    let status = server
        .terminate(Duration::from_secs(10))
        .expect("oxcd stops on SIGTERM");
    assert!(
        status.success(),
        "SIGTERM must be a clean shutdown with exit status 0, got {status} after {:?}",
        started.elapsed()
    );

    server.restart().await;
    let mut client = server.client().await;
    let resp = client
        .get("t/", Some(GetOptions::new().with_prefix()))
        .await
        .unwrap();
    assert_eq!(resp.kvs().len(), 20);
    assert_eq!(resp.header().unwrap().revision(), last);
    assert_eq!(resp.kvs()[19].value(), b"v19");
}

#[tokio::test]
async fn second_member_on_a_data_dir_in_use_refuses_to_start() {
    let server = Server::start(Flavor::Oxcd).await;
    let mut client = server.client().await;
    client.put("owner", "first", None).await.unwrap();

    let intruder = MemberSpec {
        client_port: oxcd_tests::free_port(),
        peer_port: oxcd_tests::free_port(),
        ..server.spec().clone()
    };
    let log = server.dir().join("intruder.log");
    let (status, output) = tokio::task::spawn_blocking(move || {
        run_expecting_exit(&intruder, &log, Duration::from_secs(15))
    })
    .await
    .unwrap()
    .expect("a second member on a locked data dir must exit, not wait for the lock");
    assert!(
        !status.success(),
        "second member exited with {status}; output:\n{output}"
    );
    let lowered = output.to_lowercase();
    let data_dir = server.data_dir().display().to_string();
    assert!(
        lowered.contains("lock") || output.contains(&data_dir),
        "the error should name the data dir ({data_dir}) or the lock; output:\n{output}"
    );

    let still = client
        .get("owner", None)
        .await
        .expect("the first member keeps serving");
    assert_eq!(still.kvs()[0].value(), b"first");
}
