//! Watch helpers shared by the watch, lease and kube-call tests, and the randomized
//! watch-guarantee checker.
//!
//! The checker drives concurrent writers over a small key space while many watchers record every
//! response, rebuilds the exact event history from the writers' acknowledgements (each write
//! reports its revision, and deletes report what they removed), and then checks every watcher
//! against it: ordered, unique, atomic (one revision, one response), reliable (no gaps), prev_kv
//! correct, filters honoured, resumable from a revision, and progress notifications never ahead
//! of undelivered events. These are the guarantees etcd's own robustness tests check.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::{self, Write as _};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use etcd_client::{
    Client, Compare, CompareOp, DeleteOptions, EventType, GetOptions, KeyValue, Txn, TxnOp,
    TxnOpResponse, WatchFilterType, WatchOptions, WatchResponse, WatchStream,
};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::{connect, require_etcd, Flavor, Server, StartOptions};

/// How long a test waits for one watch response it expects before failing.
pub const WATCH_WAIT: Duration = Duration::from_secs(10);

// ---------------------------------------------------------------------------------------------
// Running a body against both flavours with a server handle
// ---------------------------------------------------------------------------------------------

/// Like [`crate::for_both`], but the body owns the [`Server`] (so it can restart it) and both
/// members start with `options` (e.g. a short progress-notify interval). etcd runs first, so an
/// expectation that fails there is a wrong test, not an oxcd bug.
pub async fn for_both_servers<F, Fut>(options: StartOptions, body: F)
where
    F: Fn(Server) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    require_etcd();
    for flavor in [Flavor::Etcd, Flavor::Oxcd] {
        let server = Server::start_with(flavor, options.clone()).await;
        if let Err(e) = tokio::spawn(body(server)).await {
            panic!("[against {flavor}] {}", crate::failure_message(e));
        }
    }
}

/// The flag that sets the periodic progress-notify interval (etcd 3.4 gets its
/// `--experimental-` name, see [`Flavor::flag_name`](crate::Flavor::flag_name)).
pub fn progress_notify_interval(interval: &str) -> StartOptions {
    StartOptions {
        extra_args: vec!["--watch-progress-notify-interval".into(), interval.into()],
        ..StartOptions::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Plain-data copies of watch responses, comparable with `==` and readable in assertion output
// ---------------------------------------------------------------------------------------------

#[derive(Clone, PartialEq, Eq, Default)]
pub struct Kv {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    pub create_revision: i64,
    pub mod_revision: i64,
    pub version: i64,
    pub lease: i64,
}

impl Kv {
    pub fn new(
        key: &str,
        value: &str,
        create_revision: i64,
        mod_revision: i64,
        version: i64,
    ) -> Kv {
        Kv {
            key: key.as_bytes().to_vec(),
            value: value.as_bytes().to_vec(),
            create_revision,
            mod_revision,
            version,
            lease: 0,
        }
    }

    pub fn with_lease(mut self, lease: i64) -> Kv {
        self.lease = lease;
        self
    }

    /// What etcd puts in a DELETE event's `kv`: only the key and the delete revision.
    pub fn tombstone(key: &[u8], revision: i64) -> Kv {
        Kv {
            key: key.to_vec(),
            mod_revision: revision,
            ..Kv::default()
        }
    }

    pub fn key_str(&self) -> String {
        String::from_utf8_lossy(&self.key).into_owned()
    }
}

impl From<&KeyValue> for Kv {
    fn from(kv: &KeyValue) -> Kv {
        Kv {
            key: kv.key().to_vec(),
            value: kv.value().to_vec(),
            create_revision: kv.create_revision(),
            mod_revision: kv.mod_revision(),
            version: kv.version(),
            lease: kv.lease(),
        }
    }
}

fn show_bytes(bytes: &[u8]) -> String {
    if bytes.len() > 48 {
        format!(
            "{:?}…({} bytes)",
            String::from_utf8_lossy(&bytes[..48]),
            bytes.len()
        )
    } else {
        format!("{:?}", String::from_utf8_lossy(bytes))
    }
}

impl fmt::Debug for Kv {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}={} c{} m{} v{}",
            show_bytes(&self.key),
            show_bytes(&self.value),
            self.create_revision,
            self.mod_revision,
            self.version
        )?;
        if self.lease != 0 {
            write!(f, " lease {}", self.lease)?;
        }
        Ok(())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    Put,
    Delete,
}

#[derive(Clone, PartialEq, Eq)]
pub struct Ev {
    pub kind: Kind,
    pub kv: Kv,
    pub prev_kv: Option<Kv>,
}

impl Ev {
    pub fn put(kv: Kv) -> Ev {
        Ev {
            kind: Kind::Put,
            kv,
            prev_kv: None,
        }
    }

    pub fn delete(key: &str, revision: i64) -> Ev {
        Ev {
            kind: Kind::Delete,
            kv: Kv::tombstone(key.as_bytes(), revision),
            prev_kv: None,
        }
    }

    pub fn with_prev(mut self, prev: Kv) -> Ev {
        self.prev_kv = Some(prev);
        self
    }

    pub fn revision(&self) -> i64 {
        self.kv.mod_revision
    }

    pub fn key_str(&self) -> String {
        self.kv.key_str()
    }
}

impl fmt::Debug for Ev {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}[{:?}]", self.kind, self.kv)?;
        if let Some(prev) = &self.prev_kv {
            write!(f, " prev[{prev:?}]")?;
        }
        Ok(())
    }
}

/// Every field of a watch response, including `fragment`.
#[derive(Clone, PartialEq, Eq)]
pub struct Resp {
    pub watch_id: i64,
    /// `None` when the response carried no header at all.
    pub header_revision: Option<i64>,
    pub created: bool,
    pub canceled: bool,
    pub compact_revision: i64,
    pub cancel_reason: String,
    pub fragment: bool,
    pub events: Vec<Ev>,
}

impl Resp {
    /// The header revision, failing the test when the header is missing.
    pub fn revision(&self) -> i64 {
        self.header_revision
            .unwrap_or_else(|| panic!("watch response without a header: {self:?}"))
    }

    /// A response that is neither a create/cancel reply nor carries events: a progress
    /// notification (periodic, or the answer to a progress request when watch_id is -1).
    pub fn is_progress(&self) -> bool {
        !self.created
            && !self.canceled
            && self.events.is_empty()
            && self.compact_revision == 0
            && !self.fragment
    }
}

impl From<&WatchResponse> for Resp {
    fn from(resp: &WatchResponse) -> Resp {
        Resp {
            watch_id: resp.watch_id(),
            header_revision: resp.header().map(|h| h.revision()),
            created: resp.created(),
            canceled: resp.canceled(),
            compact_revision: resp.compact_revision(),
            cancel_reason: resp.cancel_reason().to_string(),
            fragment: fragment_flag(resp),
            events: resp
                .events()
                .iter()
                .map(|e| Ev {
                    kind: match e.event_type() {
                        EventType::Put => Kind::Put,
                        EventType::Delete => Kind::Delete,
                    },
                    kv: Kv::from(e.kv().expect("every watch event carries a kv")),
                    prev_kv: e.prev_kv().map(Kv::from),
                })
                .collect(),
        }
    }
}

impl fmt::Debug for Resp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Resp{{id {} rev {:?}{}{}{}{}{} events {:?}}}",
            self.watch_id,
            self.header_revision,
            if self.created { " created" } else { "" },
            if self.canceled { " canceled" } else { "" },
            if self.compact_revision != 0 {
                format!(" compact_revision {}", self.compact_revision)
            } else {
                String::new()
            },
            if self.cancel_reason.is_empty() {
                String::new()
            } else {
                format!(" reason {:?}", self.cancel_reason)
            },
            if self.fragment { " fragment" } else { "" },
            self.events
        )
    }
}

/// etcd-client 0.21 keeps `WatchResponse.fragment` private (only its `pub-response-field`
/// feature exposes it), so it is read from the derived Debug output, which prints fields in
/// proto order. Formatting is cut off at `events` so multi-megabyte values are never rendered.
pub fn fragment_flag(resp: &WatchResponse) -> bool {
    struct UpToEvents(String);
    impl fmt::Write for UpToEvents {
        fn write_str(&mut self, s: &str) -> fmt::Result {
            self.0.push_str(s);
            if self.0.contains("events:") {
                Err(fmt::Error)
            } else {
                Ok(())
            }
        }
    }
    let mut out = UpToEvents(String::new());
    let _ = write!(out, "{resp:?}");
    if out.0.contains("fragment: true") {
        true
    } else if out.0.contains("fragment: false") {
        false
    } else {
        panic!("cannot find the fragment flag in {:?}", out.0)
    }
}

// ---------------------------------------------------------------------------------------------
// A watch stream with bounded waits
// ---------------------------------------------------------------------------------------------

/// One bidirectional watch stream. Every wait is bounded by [`WATCH_WAIT`].
pub struct Session {
    stream: WatchStream,
}

impl Session {
    /// Opens a stream whose first request creates a watch; returns the stream and the reply to
    /// that create (not checked, so callers can assert on failed creates too).
    pub async fn open(
        client: &mut Client,
        key: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> (Session, Resp) {
        let stream = tokio::time::timeout(WATCH_WAIT, client.watch(key, Some(options)))
            .await
            .expect("opening a watch stream timed out")
            .expect("opening a watch stream failed");
        let mut session = Session { stream };
        let first = session.recv().await;
        (session, first)
    }

    /// Opens a stream with one watch and checks the create reply; returns the watch id.
    pub async fn watch(
        client: &mut Client,
        key: impl Into<Vec<u8>>,
        options: WatchOptions,
    ) -> (Session, i64) {
        let (session, created) = Self::open(client, key, options).await;
        assert_created(&created);
        (session, created.watch_id)
    }

    /// Sends a create request on this stream without waiting for the reply.
    pub async fn send_create(&mut self, key: impl Into<Vec<u8>>, options: WatchOptions) {
        self.stream
            .watch(key, Some(options))
            .await
            .expect("sending a watch create request");
    }

    /// Creates a watch on this stream and returns the next response, which must be its reply
    /// (only valid when no other watch on the stream can be sending events meanwhile).
    pub async fn create(&mut self, key: impl Into<Vec<u8>>, options: WatchOptions) -> Resp {
        self.send_create(key, options).await;
        self.recv().await
    }

    pub async fn cancel(&mut self, watch_id: i64) {
        self.stream
            .cancel(watch_id)
            .await
            .expect("sending a watch cancel request");
    }

    pub async fn request_progress(&mut self) {
        self.stream
            .request_progress()
            .await
            .expect("sending a progress request");
    }

    /// The next response; fails the test on timeout, error or end of stream.
    pub async fn recv(&mut self) -> Resp {
        match self.recv_within(WATCH_WAIT).await {
            Some(resp) => resp,
            None => panic!("no watch response within {WATCH_WAIT:?}"),
        }
    }

    /// The next response, or `None` if none comes within `wait`.
    pub async fn recv_within(&mut self, wait: Duration) -> Option<Resp> {
        match tokio::time::timeout(wait, self.stream.message()).await {
            Err(_) => None,
            Ok(Ok(Some(resp))) => Some(Resp::from(&resp)),
            Ok(Ok(None)) => panic!("the watch stream ended"),
            Ok(Err(e)) => panic!("the watch stream failed: {e:?}"),
        }
    }

    /// Receives responses until the events of `watch_id` reach `revision`; returns those
    /// events. Any response for another watch, and any non-event response, fails the test.
    pub async fn events_through(&mut self, watch_id: i64, revision: i64) -> Vec<Ev> {
        let mut events: Vec<Ev> = Vec::new();
        while events.last().map(Ev::revision).unwrap_or(0) < revision {
            let resp = self.recv().await;
            assert_eq!(
                resp.watch_id, watch_id,
                "expected events of watch {watch_id} up to revision {revision}, got {resp:?} \
                 (events so far: {events:?})"
            );
            assert!(
                !resp.events.is_empty() && !resp.created && !resp.canceled,
                "expected an event response of watch {watch_id}, got {resp:?}"
            );
            events.extend(resp.events);
        }
        events
    }
}

/// Checks the exact reply etcd sends for a successful create: created, not canceled, no
/// compact revision, no reason, no events, and a header.
pub fn assert_created(resp: &Resp) {
    assert!(
        resp.created && !resp.canceled,
        "expected a successful create reply, got {resp:?}"
    );
    assert!(resp.watch_id >= 0, "created watch has id {}", resp.watch_id);
    assert_eq!(resp.compact_revision, 0, "{resp:?}");
    assert_eq!(resp.cancel_reason, "", "{resp:?}");
    assert!(
        resp.events.is_empty(),
        "a create reply carries no events: {resp:?}"
    );
    assert!(
        resp.header_revision.is_some(),
        "create reply without header"
    );
}

pub fn header_revision(header: Option<&etcd_client::ResponseHeader>) -> i64 {
    header.expect("response carries a header").revision()
}

/// The store's current revision.
pub async fn current_revision(client: &mut Client) -> i64 {
    header_revision(
        client
            .get("\0", Some(GetOptions::new().with_count_only()))
            .await
            .expect("reading the current revision")
            .header(),
    )
}

/// Polls `check` every 50 ms until it returns true or `timeout` passes.
pub async fn poll_until<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

// ---------------------------------------------------------------------------------------------
// The randomized guarantee checker: writers and their acknowledged history
// ---------------------------------------------------------------------------------------------

/// The writers' key space, sorted. `chk/` is the prefix most watchers watch; `chj`, `chk` and
/// `chk0` (the prefix end) sit just outside it, so range filtering at the edges is exercised.
pub const CHECKER_KEYS: &[&str] = &[
    "chj", "chk", "chk/a", "chk/b", "chk/c", "chk/d", "chk/e", "chk/f", "chk/g", "chk/h", "chk0",
];

/// One effect of an acknowledged write, in the order the server applied it.
#[derive(Clone, Debug)]
pub enum Applied {
    Put {
        key: Vec<u8>,
        value: Vec<u8>,
    },
    /// `prev` is what the delete response said it removed, cross-checked against the history.
    Delete {
        key: Vec<u8>,
        prev: Kv,
    },
}

/// An acknowledged write that changed the store, and so got a revision of its own.
#[derive(Clone, Debug)]
pub struct Ack {
    pub revision: i64,
    pub applied: Vec<Applied>,
    pub what: String,
}

enum TxnWrite {
    Put(String, String),
    Delete(String),
}

fn pick_key(rng: &mut StdRng) -> String {
    CHECKER_KEYS[rng.gen_range(0..CHECKER_KEYS.len())].to_string()
}

fn txn_branch(rng: &mut StdRng, tag: &str, max: usize) -> Vec<TxnWrite> {
    // Distinct keys in random (not sorted) order, so sub-revision order is observable.
    let mut keys: Vec<&str> = CHECKER_KEYS.to_vec();
    keys.shuffle(rng);
    let n = rng.gen_range(1..=max);
    keys.into_iter()
        .take(n)
        .enumerate()
        .map(|(i, k)| {
            if rng.gen_bool(0.7) {
                TxnWrite::Put(k.to_string(), format!("{tag}.{i}"))
            } else {
                TxnWrite::Delete(k.to_string())
            }
        })
        .collect()
}

fn delete_effects(prev_kvs: &[KeyValue]) -> Vec<Applied> {
    prev_kvs
        .iter()
        .map(|kv| Applied::Delete {
            key: kv.key().to_vec(),
            prev: Kv::from(kv),
        })
        .collect()
}

/// Runs one random write and returns its acknowledgement if it changed the store. Any error
/// fails the test: writers only run while the server is up.
async fn random_write(client: &mut Client, rng: &mut StdRng, tag: &str) -> Option<Ack> {
    let choice = rng.gen_range(0..100);
    let (revision, applied, what) = if choice < 40 {
        let key = pick_key(rng);
        let resp = client
            .put(key.clone(), tag, None)
            .await
            .unwrap_or_else(|e| panic!("writer put {key}: {e}"));
        let applied = vec![Applied::Put {
            key: key.clone().into_bytes(),
            value: tag.as_bytes().to_vec(),
        }];
        (
            header_revision(resp.header()),
            applied,
            format!("put {key}"),
        )
    } else if choice < 55 {
        let key = pick_key(rng);
        let resp = client
            .delete(key.clone(), Some(DeleteOptions::new().with_prev_key()))
            .await
            .unwrap_or_else(|e| panic!("writer delete {key}: {e}"));
        assert_eq!(resp.deleted(), resp.prev_kvs().len() as i64);
        (
            header_revision(resp.header()),
            delete_effects(resp.prev_kvs()),
            format!("delete {key}"),
        )
    } else if choice < 65 {
        let a = rng.gen_range(0..CHECKER_KEYS.len());
        let b = rng.gen_range(a + 1..=CHECKER_KEYS.len());
        let from = CHECKER_KEYS[a];
        // One past the last key of the slice, so the range covers exactly keys[a..b].
        let to = if b == CHECKER_KEYS.len() {
            "chk1".to_string()
        } else {
            CHECKER_KEYS[b].to_string()
        };
        let resp = client
            .delete(
                from,
                Some(DeleteOptions::new().with_range(to.clone()).with_prev_key()),
            )
            .await
            .unwrap_or_else(|e| panic!("writer delete [{from}, {to}): {e}"));
        assert_eq!(resp.deleted(), resp.prev_kvs().len() as i64);
        (
            header_revision(resp.header()),
            delete_effects(resp.prev_kvs()),
            format!("delete [{from}, {to})"),
        )
    } else {
        let compare_key = pick_key(rng);
        let compare_version = rng.gen_range(0..3);
        let success = txn_branch(rng, &format!("{tag}.s"), 4);
        let failure = txn_branch(rng, &format!("{tag}.f"), 3);
        let to_ops = |writes: &[TxnWrite]| -> Vec<TxnOp> {
            writes
                .iter()
                .map(|w| match w {
                    TxnWrite::Put(k, v) => TxnOp::put(k.clone(), v.clone(), None),
                    TxnWrite::Delete(k) => {
                        TxnOp::delete(k.clone(), Some(DeleteOptions::new().with_prev_key()))
                    }
                })
                .collect()
        };
        let txn = Txn::new()
            .when([Compare::version(
                compare_key.clone(),
                CompareOp::Greater,
                compare_version,
            )])
            .and_then(to_ops(&success))
            .or_else(to_ops(&failure));
        let resp = client
            .txn(txn)
            .await
            .unwrap_or_else(|e| panic!("writer txn: {e}"));
        let branch = if resp.succeeded() { &success } else { &failure };
        let op_responses = resp.op_responses();
        assert_eq!(op_responses.len(), branch.len(), "one response per txn op");
        let mut applied = Vec::new();
        for (write, op_resp) in branch.iter().zip(&op_responses) {
            match (write, op_resp) {
                (TxnWrite::Put(k, v), TxnOpResponse::Put(_)) => applied.push(Applied::Put {
                    key: k.clone().into_bytes(),
                    value: v.clone().into_bytes(),
                }),
                (TxnWrite::Delete(_), TxnOpResponse::Delete(d)) => {
                    applied.extend(delete_effects(d.prev_kvs()))
                }
                _ => panic!("txn op response does not match its op: {op_resp:?}"),
            }
        }
        let describe = |writes: &[TxnWrite]| {
            writes
                .iter()
                .map(|w| match w {
                    TxnWrite::Put(k, _) => format!("put {k}"),
                    TxnWrite::Delete(k) => format!("delete {k}"),
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        (
            header_revision(resp.header()),
            applied,
            format!(
                "txn version({compare_key}) > {compare_version} ? [{}] : [{}] -> {}",
                describe(&success),
                describe(&failure),
                resp.succeeded()
            ),
        )
    };
    // A write that changed nothing (a delete of absent keys) does not get a revision.
    (!applied.is_empty()).then_some(Ack {
        revision,
        applied,
        what,
    })
}

/// Spawns a writer that issues random writes until `until`; it returns its acknowledgements.
pub fn spawn_writer(
    endpoint: String,
    seed: u64,
    name: String,
    until: Instant,
) -> JoinHandle<Vec<Ack>> {
    tokio::spawn(async move {
        let mut client = connect(&endpoint, Duration::from_secs(10))
            .await
            .expect("writer connects");
        let mut rng = StdRng::seed_from_u64(seed);
        let mut acks = Vec::new();
        let mut n = 0u64;
        while Instant::now() < until {
            n += 1;
            let tag = format!("{name}-{n}");
            if let Some(ack) = random_write(&mut client, &mut rng, &tag).await {
                acks.push(ack);
            }
        }
        acks
    })
}

/// The exact event history, rebuilt from the writers' acknowledgements.
pub struct History {
    pub base_revision: i64,
    pub last_revision: i64,
    /// Every event in revision and then sub-revision order.
    pub events: Vec<Ev>,
    pub final_state: BTreeMap<Vec<u8>, Kv>,
}

impl History {
    /// `initial` is the state of the key space at `base_revision`; every revision after it must
    /// be explained by exactly one acknowledgement, or the ground truth itself is incomplete.
    pub fn build(
        base_revision: i64,
        initial: BTreeMap<Vec<u8>, Kv>,
        mut acks: Vec<Ack>,
    ) -> History {
        acks.sort_by_key(|a| a.revision);
        let mut state = initial;
        let mut events = Vec::new();
        let mut expected_revision = base_revision + 1;
        for ack in &acks {
            assert_eq!(
                ack.revision, expected_revision,
                "acknowledged revisions must be exactly {base_revision}+1, +2, …: revision \
                 {expected_revision} is unexplained or doubly acknowledged (next ack: {ack:?})"
            );
            expected_revision += 1;
            let rev = ack.revision;
            for applied in &ack.applied {
                match applied {
                    Applied::Put { key, value } => {
                        let prev = state.get(key).cloned();
                        let kv = Kv {
                            key: key.clone(),
                            value: value.clone(),
                            create_revision: prev.as_ref().map_or(rev, |p| p.create_revision),
                            mod_revision: rev,
                            version: prev.as_ref().map_or(1, |p| p.version + 1),
                            lease: 0,
                        };
                        state.insert(key.clone(), kv.clone());
                        events.push(Ev {
                            kind: Kind::Put,
                            kv,
                            prev_kv: prev,
                        });
                    }
                    Applied::Delete { key, prev } => {
                        let before = state.remove(key);
                        assert_eq!(
                            before.as_ref(),
                            Some(prev),
                            "the delete at revision {rev} ({}) reported a prev_kv that differs \
                             from the history",
                            ack.what
                        );
                        events.push(Ev {
                            kind: Kind::Delete,
                            kv: Kv::tombstone(key, rev),
                            prev_kv: before,
                        });
                    }
                }
            }
        }
        History {
            base_revision,
            last_revision: expected_revision - 1,
            events,
            final_state: state,
        }
    }

    /// The events `spec` must deliver when it starts at `start` (inclusive).
    pub fn expected(&self, spec: &WatchSpec, start: i64) -> Vec<Ev> {
        self.events
            .iter()
            .filter(|e| e.revision() >= start && spec.selects(&e.kv.key))
            .filter(|e| match e.kind {
                Kind::Put => !spec.no_put,
                Kind::Delete => !spec.no_delete,
            })
            .map(|e| Ev {
                kind: e.kind,
                kv: e.kv.clone(),
                prev_kv: if spec.prev_kv {
                    e.prev_kv.clone()
                } else {
                    None
                },
            })
            .collect()
    }

    /// The state of the writers' key space at `revision`, straight from the server.
    pub async fn read_state(client: &mut Client, revision: i64) -> BTreeMap<Vec<u8>, Kv> {
        let options = GetOptions::new().with_range("chk1");
        let options = if revision > 0 {
            options.with_revision(revision)
        } else {
            options
        };
        client
            .get(CHECKER_KEYS[0], Some(options))
            .await
            .expect("reading the writers' key space")
            .kvs()
            .iter()
            .map(|kv| (kv.key().to_vec(), Kv::from(kv)))
            .collect()
    }
}

// ---------------------------------------------------------------------------------------------
// The randomized guarantee checker: watchers
// ---------------------------------------------------------------------------------------------

#[derive(Clone, Debug)]
pub struct WatchSpec {
    pub label: String,
    pub key: Vec<u8>,
    /// As on the wire: empty = the key alone, `"\0"` = every key from `key` on.
    pub range_end: Vec<u8>,
    /// 0 = from the next revision.
    pub start_revision: i64,
    pub prev_kv: bool,
    pub no_put: bool,
    pub no_delete: bool,
    pub progress_notify: bool,
    /// Drop the stream and resume from the last seen revision + 1 after this many events.
    pub reconnect_every: Option<usize>,
}

impl WatchSpec {
    pub fn prefix(label: &str, prefix: &str) -> WatchSpec {
        let mut end = prefix.as_bytes().to_vec();
        *end.last_mut().expect("non-empty prefix") += 1;
        WatchSpec {
            label: label.into(),
            key: prefix.as_bytes().to_vec(),
            range_end: end,
            start_revision: 0,
            prev_kv: false,
            no_put: false,
            no_delete: false,
            progress_notify: false,
            reconnect_every: None,
        }
    }

    pub fn range(label: &str, key: &str, end: &str) -> WatchSpec {
        WatchSpec {
            key: key.as_bytes().to_vec(),
            range_end: end.as_bytes().to_vec(),
            ..WatchSpec::prefix(label, "x")
        }
    }

    pub fn from(mut self, start_revision: i64) -> Self {
        self.start_revision = start_revision;
        self
    }
    pub fn prev_kv(mut self) -> Self {
        self.prev_kv = true;
        self
    }
    pub fn no_put(mut self) -> Self {
        self.no_put = true;
        self
    }
    pub fn no_delete(mut self) -> Self {
        self.no_delete = true;
        self
    }
    pub fn progress_notify(mut self) -> Self {
        self.progress_notify = true;
        self
    }
    pub fn reconnect_every(mut self, events: usize) -> Self {
        self.reconnect_every = Some(events);
        self
    }

    pub fn selects(&self, key: &[u8]) -> bool {
        if self.range_end.is_empty() {
            key == self.key.as_slice()
        } else if self.range_end == [0] {
            key >= self.key.as_slice()
        } else {
            key >= self.key.as_slice() && key < self.range_end.as_slice()
        }
    }

    pub fn options(&self, start_revision: i64) -> WatchOptions {
        let mut options = WatchOptions::new().with_start_revision(start_revision);
        if !self.range_end.is_empty() {
            options = options.with_range(self.range_end.clone());
        }
        if self.prev_kv {
            options = options.with_prev_key();
        }
        if self.progress_notify {
            options = options.with_progress_notify();
        }
        let mut filters = Vec::new();
        if self.no_put {
            filters.push(WatchFilterType::NoPut);
        }
        if self.no_delete {
            filters.push(WatchFilterType::NoDelete);
        }
        if !filters.is_empty() {
            options = options.with_filters(filters);
        }
        options
    }
}

/// Everything one watch received, per create request (a "segment"; resuming starts a new one).
#[derive(Debug, Default)]
pub struct WatchLog {
    pub segments: Vec<Segment>,
    pub error: Option<String>,
}

#[derive(Debug)]
pub struct Segment {
    pub requested_start: i64,
    pub watch_id: Option<i64>,
    pub responses: Vec<Resp>,
}

impl WatchLog {
    fn events(&self) -> impl Iterator<Item = &Ev> {
        self.segments
            .iter()
            .flat_map(|s| s.responses.iter())
            .flat_map(|r| r.events.iter())
    }

    pub fn event_count(&self) -> usize {
        self.events().count()
    }

    /// The first revision this watch covers: the requested start, or for a start of 0 the
    /// revision after the one in its first create reply.
    pub fn effective_start(&self) -> Option<i64> {
        let first = self.segments.first()?;
        if first.requested_start > 0 {
            return Some(first.requested_start);
        }
        first
            .responses
            .iter()
            .find(|r| r.created)
            .map(|r| r.revision() + 1)
    }

    /// Where a resumed watch starts: the revision after the last event seen.
    fn resume_revision(&self) -> Option<i64> {
        match self.events().last() {
            Some(e) => Some(e.revision() + 1),
            None => self.effective_start(),
        }
    }
}

type SharedLog = Arc<Mutex<WatchLog>>;

/// A task holding one watch stream with one or more watches (created one after another, each
/// after the previous create reply, as kube-apiserver does), reconnecting when asked to.
pub struct StreamTask {
    pub specs: Vec<WatchSpec>,
    pub logs: Vec<SharedLog>,
    handle: JoinHandle<()>,
}

enum StreamEnd {
    Stopped,
    Resume,
    Broken(String),
}

impl StreamTask {
    /// `tolerate_disconnects`: a broken stream is reopened (the server is being restarted)
    /// instead of being recorded as an error.
    pub fn spawn(
        endpoint: String,
        specs: Vec<WatchSpec>,
        stop: watch::Receiver<bool>,
        tolerate_disconnects: Arc<std::sync::atomic::AtomicBool>,
    ) -> StreamTask {
        let logs: Vec<SharedLog> = specs.iter().map(|_| SharedLog::default()).collect();
        let task_specs = specs.clone();
        let task_logs = logs.clone();
        let handle = tokio::spawn(async move {
            let mut stop = stop;
            let fail = |msg: String| {
                for log in &task_logs {
                    let mut log = log.lock().unwrap();
                    log.error.get_or_insert_with(|| msg.clone());
                }
            };
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                if *stop.borrow() {
                    return;
                }
                match run_stream_once(&endpoint, &task_specs, &task_logs, &mut stop).await {
                    StreamEnd::Stopped => return,
                    StreamEnd::Resume => continue,
                    StreamEnd::Broken(msg) => {
                        let tolerated =
                            tolerate_disconnects.load(std::sync::atomic::Ordering::SeqCst);
                        if !tolerated || Instant::now() > deadline {
                            fail(msg);
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        StreamTask {
            specs,
            logs,
            handle,
        }
    }

    pub async fn join(self) {
        if let Err(e) = self.handle.await {
            panic!("watch stream task failed: {e}");
        }
    }
}

/// Opens the stream, creates every watch (first time at its spec's start, later from the
/// revision after the last event it saw) and records responses until stopped or broken.
async fn run_stream_once(
    endpoint: &str,
    specs: &[WatchSpec],
    logs: &[SharedLog],
    stop: &mut watch::Receiver<bool>,
) -> StreamEnd {
    let mut client = match connect(endpoint, Duration::from_secs(5)).await {
        Ok(c) => c,
        Err(e) => return StreamEnd::Broken(format!("connect: {e}")),
    };
    let mut stream: Option<WatchStream> = None;
    let mut ids: HashMap<i64, usize> = HashMap::new();
    let mut segment_events = vec![0usize; specs.len()];

    let record = |ids: &HashMap<i64, usize>, resp: Resp| -> Result<usize, String> {
        let Some(&index) = ids.get(&resp.watch_id) else {
            return Err(format!("response for an unknown watch id: {resp:?}"));
        };
        let mut log = logs[index].lock().unwrap();
        log.segments
            .last_mut()
            .expect("a segment exists once the watch is created")
            .responses
            .push(resp);
        Ok(index)
    };

    for (index, spec) in specs.iter().enumerate() {
        let start = {
            let log = logs[index].lock().unwrap();
            if log.segments.is_empty() {
                spec.start_revision
            } else {
                match log.resume_revision() {
                    Some(rev) => rev,
                    None => {
                        return StreamEnd::Broken(format!(
                            "watch {} broke before it was created",
                            spec.label
                        ))
                    }
                }
            }
        };
        let options = spec.options(start);
        let sent = match stream.as_mut() {
            None => match client.watch(spec.key.clone(), Some(options)).await {
                Ok(s) => {
                    stream = Some(s);
                    Ok(())
                }
                Err(e) => Err(e),
            },
            Some(s) => s.watch(spec.key.clone(), Some(options)).await,
        };
        if let Err(e) = sent {
            return StreamEnd::Broken(format!("create {}: {e}", spec.label));
        }
        logs[index].lock().unwrap().segments.push(Segment {
            requested_start: start,
            watch_id: None,
            responses: Vec::new(),
        });
        // Wait for this watch's create reply, recording events of earlier watches meanwhile.
        loop {
            let s = stream.as_mut().expect("stream is open");
            let message = tokio::select! {
                _ = stop.changed() => return StreamEnd::Stopped,
                m = tokio::time::timeout(WATCH_WAIT, s.message()) => m,
            };
            let resp = match message {
                Err(_) => return StreamEnd::Broken(format!("no create reply for {}", spec.label)),
                Ok(Err(e)) => return StreamEnd::Broken(format!("stream error: {e}")),
                Ok(Ok(None)) => return StreamEnd::Broken("stream ended".into()),
                Ok(Ok(Some(r))) => Resp::from(&r),
            };
            if resp.created && !ids.contains_key(&resp.watch_id) {
                let mut log = logs[index].lock().unwrap();
                let segment = log.segments.last_mut().expect("segment just pushed");
                segment.watch_id = Some(resp.watch_id);
                let ok = !resp.canceled;
                segment.responses.push(resp.clone());
                if !ok {
                    log.error = Some(format!("create of {} was refused: {resp:?}", spec.label));
                    return StreamEnd::Stopped;
                }
                ids.insert(resp.watch_id, index);
                break;
            }
            if let Err(msg) = record(&ids, resp) {
                return StreamEnd::Broken(msg);
            }
        }
    }

    let s = stream.as_mut().expect("stream is open");
    loop {
        let message = tokio::select! {
            _ = stop.changed() => return StreamEnd::Stopped,
            m = s.message() => m,
        };
        let resp = match message {
            Err(e) => return StreamEnd::Broken(format!("stream error: {e}")),
            Ok(None) => return StreamEnd::Broken("stream ended".into()),
            Ok(Some(r)) => Resp::from(&r),
        };
        let events = resp.events.len();
        match record(&ids, resp) {
            Err(msg) => return StreamEnd::Broken(msg),
            Ok(index) => {
                segment_events[index] += events;
                if let Some(every) = specs[index].reconnect_every {
                    if segment_events[index] >= every {
                        return StreamEnd::Resume;
                    }
                }
            }
        }
    }
}

/// Checks one watch against the history; returns a description of every violated guarantee.
/// `prev_kv_may_go_missing`: etcd's watch server reads each event's previous value when it
/// sends the event and sends the event without it when that read fails, as it does while the
/// backend closes for a shutdown (v3rpc/watch.go, sendLoop). An event delivered without the
/// previous value it should carry then counts as delivered; its other fields must still match.
pub fn verify_watch(
    spec: &WatchSpec,
    log: &WatchLog,
    history: &History,
    prev_kv_may_go_missing: bool,
) -> Vec<String> {
    let mut problems = Vec::new();
    let label = &spec.label;
    if let Some(error) = &log.error {
        problems.push(format!("{label}: {error}"));
        return problems;
    }
    let Some(start) = log.effective_start() else {
        problems.push(format!("{label}: never created"));
        return problems;
    };
    let expected = history.expected(spec, start);

    let mut delivered: Vec<Ev> = Vec::new();
    let mut revision_response: HashMap<i64, (usize, usize)> = HashMap::new();
    for (s, segment) in log.segments.iter().enumerate() {
        let mut last_header = 0;
        for (r, resp) in segment.responses.iter().enumerate() {
            let Some(header) = resp.header_revision else {
                problems.push(format!("{label}: response without header {resp:?}"));
                continue;
            };
            if r == 0 {
                if !resp.created || resp.canceled || !resp.events.is_empty() {
                    problems.push(format!(
                        "{label}: segment {s} does not start with a clean create reply: {resp:?}"
                    ));
                }
            } else if resp.created || resp.canceled || resp.compact_revision != 0 {
                problems.push(format!("{label}: unexpected create/cancel reply {resp:?}"));
            }
            if Some(resp.watch_id) != segment.watch_id {
                problems.push(format!(
                    "{label}: response for watch {} {resp:?}",
                    resp.watch_id
                ));
            }
            if header < last_header {
                problems.push(format!(
                    "{label}: header revision went back from {last_header} to {header}: {resp:?}"
                ));
            }
            last_header = header;
            // Atomic: the events of one revision come in one response.
            for e in &resp.events {
                let here = (s, r);
                if let Some(prev) = revision_response.insert(e.revision(), here) {
                    if prev != here {
                        problems.push(format!(
                            "{label}: events of revision {} split across responses",
                            e.revision()
                        ));
                    }
                }
                if e.revision() > header {
                    problems.push(format!(
                        "{label}: event at revision {} in a response with header revision \
                         {header}",
                        e.revision()
                    ));
                }
            }
            if r > 0 && resp.is_progress() {
                // Bookmarkable: a progress notification at R promises every event ≤ R arrived.
                if header == 0 {
                    problems.push(format!("{label}: progress notification at revision 0"));
                }
                let due = expected.iter().filter(|e| e.revision() <= header).count();
                if delivered.len() != due {
                    problems.push(format!(
                        "{label}: progress notification at revision {header} after {} events, \
                         but {due} events up to it exist",
                        delivered.len()
                    ));
                }
            }
            delivered.extend(resp.events.iter().cloned());
        }
    }

    let mut expected = expected;
    if prev_kv_may_go_missing {
        for (d, e) in delivered.iter().zip(expected.iter_mut()) {
            if d.prev_kv.is_none() && e.prev_kv.is_some() && d.kind == e.kind && d.kv == e.kv {
                e.prev_kv = None;
            }
        }
    }
    if delivered != expected {
        let mismatch = delivered
            .iter()
            .zip(&expected)
            .position(|(d, e)| d != e)
            .unwrap_or(delivered.len().min(expected.len()));
        let window = |events: &[Ev]| -> Vec<Ev> {
            events
                .iter()
                .skip(mismatch.saturating_sub(2))
                .take(6)
                .cloned()
                .collect()
        };
        problems.push(format!(
            "{label} (from revision {start}): delivered {} events, expected {}; first difference \
             at #{mismatch}\n  delivered: {:?}\n  expected:  {:?}",
            delivered.len(),
            expected.len(),
            window(&delivered),
            window(&expected)
        ));
    }
    problems
}

/// What one checker run did, for the caller's own assertions and the test output.
pub struct CheckerReport {
    pub revisions: i64,
    pub events: usize,
    pub delivered: Vec<(String, usize)>,
    /// Periodic progress notifications seen (each one was checked not to run ahead).
    pub progress_notifications: usize,
    /// Watch creations beyond the first per watch, i.e. resumptions.
    pub resumptions: usize,
}

/// The whole randomized scenario against one running server. With `restart_midway`, the writers
/// pause, the server is stopped with SIGTERM and restarted on the same data, and every watch
/// resumes from the revision after the last event it saw.
pub async fn run_guarantee_check(
    server: &mut Server,
    seed: u64,
    writers: usize,
    phase: Duration,
    restart_midway: bool,
) -> CheckerReport {
    let mut rng = StdRng::seed_from_u64(seed);
    let endpoint = server.endpoint();
    let mut client = server.client().await;
    let base_revision = current_revision(&mut client).await;
    let initial = History::read_state(&mut client, base_revision).await;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tolerate = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut streams: Vec<StreamTask> = Vec::new();
    let spawn_stream = |specs: Vec<WatchSpec>| {
        StreamTask::spawn(endpoint.clone(), specs, stop_rx.clone(), tolerate.clone())
    };

    // Live watches, all created before the first write. Several share one stream.
    streams.push(spawn_stream(vec![
        WatchSpec::prefix("live prefix prev_kv progress", "chk/")
            .prev_kv()
            .progress_notify(),
        WatchSpec::prefix("live prefix", "chk/"),
        WatchSpec::prefix("live prefix NOPUT prev_kv", "chk/")
            .no_put()
            .prev_kv(),
        WatchSpec::prefix("live prefix NODELETE", "chk/").no_delete(),
        WatchSpec::range("live range [chk/c, chk/f) prev_kv", "chk/c", "chk/f").prev_kv(),
        WatchSpec::range("live key chk/d prev_kv progress", "chk/d", "")
            .prev_kv()
            .progress_notify(),
        WatchSpec::range("live from-key chk/f", "chk/f", "\0"),
    ]));
    streams.push(spawn_stream(vec![WatchSpec::range(
        "live all keys prev_kv",
        "\0",
        "\0",
    )
    .prev_kv()]));
    streams.push(spawn_stream(vec![WatchSpec::prefix(
        "live prefix prev_kv resuming every 25",
        "chk/",
    )
    .prev_kv()
    .reconnect_every(25)]));
    wait_created(&streams).await;

    let mut acks = Vec::new();
    let phases = if restart_midway { 2 } else { 1 };
    let mut writer_seed = rng.gen::<u64>();
    for phase_index in 0..phases {
        let until = Instant::now() + phase;
        let handles: Vec<_> = (0..writers)
            .map(|w| {
                writer_seed = writer_seed.wrapping_add(1);
                spawn_writer(
                    endpoint.clone(),
                    writer_seed,
                    format!("p{phase_index}w{w}"),
                    until,
                )
            })
            .collect();
        // Historical watches join while the writers run, from random past revisions.
        // (at 30 % and 60 % of the phase)
        for i in 0..2 {
            tokio::time::sleep(phase.mul_f64(0.3)).await;
            let now = current_revision(&mut client).await;
            let start = rng.gen_range(base_revision + 1..=now.max(base_revision + 1));
            let label = format!("phase {phase_index} historical #{i} from {start}");
            let mut specs = vec![
                WatchSpec::prefix(&format!("{label} prefix prev_kv"), "chk/")
                    .from(start)
                    .prev_kv(),
                WatchSpec::prefix(&format!("{label} prefix NODELETE progress"), "chk/")
                    .from(start)
                    .no_delete()
                    .progress_notify(),
            ];
            if i == 1 {
                specs.push(
                    WatchSpec::range(
                        &format!("{label} range [chj, chk/b) prev_kv"),
                        "chj",
                        "chk/b",
                    )
                    .from(start)
                    .prev_kv()
                    .reconnect_every(40),
                );
            }
            streams.push(spawn_stream(specs));
        }
        for handle in handles {
            acks.extend(handle.await.expect("writer task"));
        }
        if restart_midway && phase_index == 0 {
            // Every watch must exist before the server goes away, or resuming is undefined.
            wait_created(&streams).await;
            tolerate.store(true, std::sync::atomic::Ordering::SeqCst);
            server
                .terminate(Duration::from_secs(20))
                .expect("server stops on SIGTERM");
            server.restart().await;
            client = server.client().await;
            let after = current_revision(&mut client).await;
            let acked = acks
                .iter()
                .map(|a| a.revision)
                .max()
                .unwrap_or(base_revision);
            assert_eq!(
                after, acked,
                "revision after restart differs from the last acknowledged"
            );
        }
    }

    // Late watches replay the whole history from the start, and one from its middle.
    let last_acked = acks
        .iter()
        .map(|a| a.revision)
        .max()
        .unwrap_or(base_revision);
    streams.push(spawn_stream(vec![
        WatchSpec::prefix("late replay all of chk/ prev_kv", "chk/")
            .from(base_revision + 1)
            .prev_kv(),
        WatchSpec::range("late replay every key NOPUT", "\0", "\0")
            .from((base_revision + last_acked) / 2 + 1)
            .no_put(),
    ]));

    let history = History::build(base_revision, initial, acks);
    let revisions = history.last_revision - history.base_revision;
    assert_eq!(
        History::read_state(&mut client, 0).await,
        history.final_state,
        "the store's final state differs from the acknowledged history"
    );

    // Wait until every watch has as many events as it must get (or the deadline passes and the
    // verification below reports what is missing).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let behind = streams.iter().any(|task| {
            task.specs.iter().zip(&task.logs).any(|(spec, log)| {
                let log = log.lock().unwrap();
                if log.error.is_some() {
                    return false;
                }
                match log.effective_start() {
                    None => true,
                    Some(start) => log.event_count() < history.expected(spec, start).len(),
                }
            })
        });
        if !behind || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A grace period, so duplicates or stray events sent after the last expected one are caught
    // too (nothing else can signal their absence); it also spans two progress-notify intervals
    // of the 200 ms the checker tests use, so idle watches get notified at least once.
    tokio::time::sleep(Duration::from_millis(500)).await;
    stop_tx.send(true).expect("watch tasks are alive");

    let mut problems = Vec::new();
    let mut delivered = Vec::new();
    let mut progress_notifications = 0;
    let mut resumptions = 0;
    for task in streams {
        let specs = task.specs.clone();
        let logs = task.logs.clone();
        task.join().await;
        for (spec, log) in specs.iter().zip(&logs) {
            let log = log.lock().unwrap();
            problems.extend(verify_watch(
                spec,
                &log,
                &history,
                restart_midway && server.flavor() == Flavor::Etcd,
            ));
            delivered.push((spec.label.clone(), log.event_count()));
            resumptions += log.segments.len().saturating_sub(1);
            progress_notifications += log
                .segments
                .iter()
                .flat_map(|s| s.responses.iter().skip(1))
                .filter(|r| r.is_progress())
                .count();
        }
    }
    assert!(
        problems.is_empty(),
        "watch guarantees violated (seed {seed}, revisions {}..={}):\n{}",
        base_revision + 1,
        history.last_revision,
        problems.join("\n")
    );
    CheckerReport {
        revisions,
        events: history.events.len(),
        delivered,
        progress_notifications,
        resumptions,
    }
}

async fn wait_created(streams: &[StreamTask]) {
    let deadline = Instant::now() + WATCH_WAIT;
    loop {
        let pending: BTreeSet<String> = streams
            .iter()
            .flat_map(|t| t.specs.iter().zip(&t.logs))
            .filter(|(_, log)| {
                let log = log.lock().unwrap();
                log.error.is_none() && log.effective_start().is_none()
            })
            .map(|(spec, _)| spec.label.clone())
            .collect();
        let errors: Vec<String> = streams
            .iter()
            .flat_map(|t| t.logs.iter())
            .filter_map(|log| log.lock().unwrap().error.clone())
            .collect();
        assert!(errors.is_empty(), "watch streams failed: {errors:?}");
        if pending.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "watches not created within {WATCH_WAIT:?}: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
