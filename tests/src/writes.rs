//! Durability checking shared by the crash tests (SIGKILL, failpoints, power loss): writers that
//! record every acknowledged write with its revision, and the check that all of them are still
//! there, untorn, after whatever happened to the members.
//!
//! Values are derived from keys, so any value found for a key can be checked for tearing even
//! when its write was never acknowledged; every fourth write is a two-key txn, to check
//! atomicity across a crash.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, Txn, TxnOp};

/// A write that takes longer than this is treated as unacknowledged (the server is gone).
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(5);

/// A write the server acknowledged, with the revision it reported.
#[derive(Clone, Debug)]
pub struct Ack {
    pub key: String,
    pub value: String,
    pub revision: i64,
}

pub fn value_for(key: &str) -> String {
    format!("value-of:{key}:{}", "x".repeat(key.len() % 17))
}

/// What one writer did.
#[derive(Default, Debug)]
pub struct WriterReport {
    pub attempted: usize,
    /// A write failed or timed out, i.e. the crash landed while this writer had one in flight.
    pub interrupted: bool,
    /// Writes that failed or timed out (a [`Writers::spread`] writer goes on after them).
    pub failed: usize,
}

/// Writers running until told to stop or until their member stops answering.
pub struct Writers {
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<WriterReport>>,
}

impl Writers {
    /// `count` writers under `prefix`, spread over `endpoints` (each writer keeps to one).
    pub async fn start(endpoints: &[String], prefix: &str, count: usize) -> Writers {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let mut tasks = Vec::new();
        for w in 0..count {
            let endpoint = &endpoints[w % endpoints.len()];
            let client = crate::connect(endpoint, WRITE_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("connecting a writer to {endpoint}: {e}"));
            tasks.push(tokio::spawn(write_until_stopped(
                client,
                format!("{prefix}/w{w:02}"),
                acks.clone(),
                stop.clone(),
            )));
        }
        Writers { acks, stop, tasks }
    }

    /// `count` writers that go on through failures, each sending its writes to the endpoints
    /// in `endpoints` in turn. The test changes that list as it stops and starts members, so
    /// writes go only to members meant to be running.
    pub fn spread(endpoints: Arc<Mutex<Vec<String>>>, prefix: &str, count: usize) -> Writers {
        let acks = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let tasks = (0..count)
            .map(|w| {
                tokio::spawn(write_spread_until_stopped(
                    endpoints.clone(),
                    w,
                    format!("{prefix}/w{w:02}"),
                    acks.clone(),
                    stop.clone(),
                ))
            })
            .collect();
        Writers { acks, stop, tasks }
    }

    pub fn acknowledged(&self) -> usize {
        self.acks.lock().unwrap().len()
    }

    /// The latest acknowledged write.
    pub fn last_ack(&self) -> Option<Ack> {
        self.acks.lock().unwrap().last().cloned()
    }

    /// Waits until at least `n` writes were acknowledged (panics after `timeout`).
    pub async fn wait_for_acks(&self, n: usize, timeout: Duration) {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.acknowledged() < n {
            assert!(
                tokio::time::Instant::now() < deadline,
                "writers got only {} of {n} acknowledgements in {timeout:?}",
                self.acknowledged()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the writers and returns every acknowledged write and their reports.
    pub async fn finish(self) -> (Vec<Ack>, Vec<WriterReport>) {
        self.stop.store(true, Ordering::Relaxed);
        let mut reports = Vec::new();
        for task in self.tasks {
            reports.push(task.await.expect("writer task panicked"));
        }
        let acks = std::mem::take(&mut *self.acks.lock().unwrap());
        (acks, reports)
    }
}

async fn write_until_stopped(
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
        match write_one(&mut client, &prefix, seq).await {
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

/// Write number `seq` under `prefix`: a put, or every fourth a two-key txn. `None` when it
/// failed or timed out.
async fn write_one(client: &mut Client, prefix: &str, seq: u64) -> Option<Vec<Ack>> {
    if seq % 4 == 3 {
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
    }
}

/// A [`Writers::spread`] writer: write `seq` goes to the `seq`-th endpoint (offset by the
/// writer's number) of the current list; a failure is counted and the next write goes on.
async fn write_spread_until_stopped(
    endpoints: Arc<Mutex<Vec<String>>>,
    writer: usize,
    prefix: String,
    acks: Arc<Mutex<Vec<Ack>>>,
    stop: Arc<AtomicBool>,
) -> WriterReport {
    let mut clients: HashMap<String, Client> = HashMap::new();
    let mut report = WriterReport::default();
    for seq in 0.. {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let endpoint = {
            let endpoints = endpoints.lock().unwrap();
            endpoints[(seq as usize + writer) % endpoints.len()].clone()
        };
        if !clients.contains_key(&endpoint) {
            match crate::connect(&endpoint, WRITE_TIMEOUT).await {
                Ok(client) => clients.insert(endpoint.clone(), client),
                Err(_) => {
                    report.failed += 1;
                    continue;
                }
            };
        }
        let client = clients.get_mut(&endpoint).expect("connected above");
        report.attempted += 1;
        match write_one(client, &prefix, seq).await {
            Some(new_acks) => acks.lock().unwrap().extend(new_acks),
            None => {
                report.interrupted = true;
                report.failed += 1;
                // A member restarting or a leader being elected; give it a moment.
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
    report
}

/// Everything under `prefix` as key -> (value, mod_revision, create_revision), read in pages
/// (a single response could exceed the client's 4 MiB message limit) pinned to one revision,
/// linearizably or from the member's own state (`serializable`).
pub async fn read_prefix(
    client: &mut Client,
    prefix: &str,
    serializable: bool,
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
        if serializable {
            options = options.with_serializable();
        }
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

/// Every acknowledged write is present with its value and revision; every key found holds its
/// own value, was written once, and a txn's two keys survived together.
pub fn verify(all_acks: &[Ack], store: &BTreeMap<String, (String, i64, i64)>, context: &str) {
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

/// Maintenance.HashKV of the member at `endpoint` at `revision`, retried while the member is
/// still catching up to it.
pub async fn hash_kv_at(endpoint: &str, revision: i64) -> u32 {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let attempt = async {
            let client = crate::connect(endpoint, Duration::from_secs(5))
                .await
                .ok()?;
            client
                .maintenance_client()
                .hash_kv(revision)
                .await
                .ok()
                .map(|r| r.hash())
        };
        if let Some(hash) = attempt.await {
            return hash;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "HashKV at {revision} from {endpoint} kept failing for 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
