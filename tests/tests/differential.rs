//! Seeded randomized differential test: the same random KV workload runs against real etcd and
//! against oxcd, and every response must be identical apart from the ids that legitimately differ
//! between clusters. `OXCD_DIFF_SEED` replays a run, `OXCD_DIFF_OPS` changes its length.

use std::fmt;

use etcd_client::{
    Client, CompactionOptions, Compare, CompareOp, DeleteOptions, GetOptions, KeyValue, PutOptions,
    ResponseHeader, SortOrder, SortTarget, Txn, TxnOp, TxnOpResponse,
};
use oxcd_tests::{grpc_error, require_etcd, Flavor, Server};
use rand::rngs::StdRng;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};

/// Keys collide on purpose and share prefixes so ranges, prefixes and from-key reads overlap.
/// At most 12 keys can exist: etcd sorts with Go's `sort.Sort`, which is only stable (ties in key
/// order) for up to 12 elements, so larger result sets would make non-key sort orders ambiguous.
const KEYS: &[&[u8]] = &[
    b"\x00",
    b"a",
    b"a\x00",
    b"a/1",
    b"a/2",
    b"ab",
    b"b",
    b"b/1",
    b"c",
    b"\xff",
    b"\xff\xff",
];

const VALUES: &[&[u8]] = &[
    b"",
    b"v0",
    b"v1",
    b"v2",
    b"v10",
    b"\x00",
    b"\xff\xfe",
    b"zz",
];

#[derive(Clone)]
struct Bytes(Vec<u8>);

impl fmt::Debug for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "\"{}\"", self.0.escape_ascii())
    }
}

fn b(bytes: &[u8]) -> Bytes {
    Bytes(bytes.to_vec())
}

#[derive(Clone, Debug)]
enum End {
    /// Single key (empty range_end).
    None,
    Prefix,
    FromKey,
    AllKeys,
    /// An explicit range_end, which may sort before the key; `\0` means from-key.
    Explicit(Bytes),
}

#[derive(Clone, Debug)]
struct RangeSpec {
    key: Bytes,
    end: End,
    revision: i64,
    limit: i64,
    sort: Option<(SortTarget, SortOrder)>,
    serializable: bool,
    keys_only: bool,
    count_only: bool,
    min_mod: i64,
    max_mod: i64,
    min_create: i64,
    max_create: i64,
}

#[derive(Clone, Debug)]
struct PutSpec {
    key: Bytes,
    value: Bytes,
    prev_kv: bool,
    ignore_value: bool,
}

#[derive(Clone, Debug)]
struct DeleteSpec {
    key: Bytes,
    end: End,
    prev_kv: bool,
}

#[derive(Clone, Debug)]
enum CompareTarget {
    Version(i64),
    Create(i64),
    Mod(i64),
    Value(Bytes),
    Lease(i64),
}

#[derive(Clone, Debug)]
struct CompareSpec {
    key: Bytes,
    end: End,
    op: CompareOp,
    target: CompareTarget,
}

#[derive(Clone, Debug)]
enum TxnOpSpec {
    Put(PutSpec),
    Range(RangeSpec),
    Delete(DeleteSpec),
    Txn(TxnSpec),
}

#[derive(Clone, Debug)]
struct TxnSpec {
    compares: Vec<CompareSpec>,
    success: Vec<TxnOpSpec>,
    failure: Vec<TxnOpSpec>,
}

#[derive(Clone, Debug)]
enum Op {
    Put(PutSpec),
    Range(RangeSpec),
    Delete(DeleteSpec),
    Txn(TxnSpec),
    Compact { revision: i64, physical: bool },
}

/// What the generator knows about the store, taken from etcd's answers.
struct Model {
    revision: i64,
    compacted: i64,
}

struct Generator {
    rng: StdRng,
}

impl Generator {
    fn key(&mut self) -> Bytes {
        if self.rng.gen_bool(0.01) {
            return b(b""); // invalid: etcd answers "key is not provided"
        }
        b(KEYS.choose(&mut self.rng).unwrap())
    }

    fn range_key(&mut self) -> Bytes {
        // Prefixes that are not keys themselves make prefix and range reads more interesting.
        match self.rng.gen_range(0..10) {
            0 => b(b"a/"),
            1 => b(b"\xff"),
            2 => b(b"0"),
            _ => self.key(),
        }
    }

    fn value(&mut self) -> Bytes {
        if self.rng.gen_bool(0.1) {
            let len = self.rng.gen_range(0..40);
            return Bytes((0..len).map(|_| self.rng.gen()).collect());
        }
        b(VALUES.choose(&mut self.rng).unwrap())
    }

    fn end(&mut self) -> End {
        match self.rng.gen_range(0..20) {
            0..=7 => End::None,
            8..=10 => End::Prefix,
            11 | 12 => End::FromKey,
            13 => End::AllKeys,
            14 => End::Explicit(b(b"\x00")),
            _ => End::Explicit(self.range_key()),
        }
    }

    /// Past, current, future, compacted and boundary revisions.
    fn revision(&mut self, m: &Model) -> i64 {
        match self.rng.gen_range(0..24) {
            0..=9 => 0,
            10 | 11 => m.revision,
            12 => m.revision + self.rng.gen_range(1..3),
            13 => m.compacted,
            14 => (m.compacted - 1).max(1),
            15 => self.rng.gen_range(1..=m.revision),
            _ => self.rng.gen_range(m.compacted.max(1)..=m.revision),
        }
    }

    /// A revision bound for filters and compares: anywhere from 0 to a bit past the current.
    fn bound(&mut self, m: &Model) -> i64 {
        self.rng.gen_range(0..=m.revision + 1)
    }

    fn range(&mut self, m: &Model) -> RangeSpec {
        let filtered = self.rng.gen_bool(0.15);
        RangeSpec {
            key: self.range_key(),
            end: self.end(),
            revision: self.revision(m),
            limit: if self.rng.gen_bool(0.3) {
                self.rng.gen_range(0..5)
            } else {
                0
            },
            sort: self.rng.gen_bool(0.3).then(|| {
                let target = *[
                    SortTarget::Key,
                    SortTarget::Version,
                    SortTarget::Create,
                    SortTarget::Mod,
                    SortTarget::Value,
                ]
                .choose(&mut self.rng)
                .unwrap();
                let order = *[SortOrder::None, SortOrder::Ascend, SortOrder::Descend]
                    .choose(&mut self.rng)
                    .unwrap();
                (target, order)
            }),
            serializable: self.rng.gen_bool(0.2),
            keys_only: self.rng.gen_bool(0.1),
            count_only: self.rng.gen_bool(0.1),
            min_mod: if filtered && self.rng.gen_bool(0.5) {
                self.bound(m)
            } else {
                0
            },
            max_mod: if filtered && self.rng.gen_bool(0.5) {
                self.bound(m)
            } else {
                0
            },
            min_create: if filtered && self.rng.gen_bool(0.5) {
                self.bound(m)
            } else {
                0
            },
            max_create: if filtered && self.rng.gen_bool(0.5) {
                self.bound(m)
            } else {
                0
            },
        }
    }

    fn plain_get(&mut self) -> RangeSpec {
        RangeSpec {
            key: b(KEYS.choose(&mut self.rng).unwrap()),
            end: End::None,
            revision: 0,
            limit: 0,
            sort: None,
            serializable: false,
            keys_only: false,
            count_only: false,
            min_mod: 0,
            max_mod: 0,
            min_create: 0,
            max_create: 0,
        }
    }

    /// `in_txn` puts never set ignore_value: etcd 3.4 checks ignore_value against the state before
    /// the txn, so `delete k from-key; put k ignore_value` passes its checks and then panics the
    /// etcd process while applying ("unexpected error during txn": key not found).
    fn put(&mut self, in_txn: bool) -> PutSpec {
        let ignore_value = !in_txn && self.rng.gen_bool(0.04);
        PutSpec {
            key: self.key(),
            // ignore_value with a value is invalid ("value is provided"); keep some of those.
            value: if ignore_value && self.rng.gen_bool(0.7) {
                b(b"")
            } else {
                self.value()
            },
            prev_kv: self.rng.gen_bool(0.5),
            ignore_value,
        }
    }

    fn delete(&mut self, in_txn: bool) -> DeleteSpec {
        DeleteSpec {
            key: self.range_key(),
            // Ranged deletes in txns collide with most puts (duplicate key), so keep them rare.
            end: if in_txn && self.rng.gen_bool(0.8) {
                End::None
            } else {
                self.end()
            },
            prev_kv: self.rng.gen_bool(0.5),
        }
    }

    fn compare(&mut self, m: &Model) -> CompareSpec {
        let target = match self.rng.gen_range(0..5) {
            0 => CompareTarget::Version(self.rng.gen_range(0..4)),
            1 => CompareTarget::Create(self.bound(m)),
            2 => CompareTarget::Mod(self.bound(m)),
            3 => CompareTarget::Value(self.value()),
            _ => CompareTarget::Lease(if self.rng.gen_bool(0.8) { 0 } else { 1 }),
        };
        CompareSpec {
            key: self.range_key(),
            end: if self.rng.gen_bool(0.2) {
                self.end()
            } else {
                End::None
            },
            op: *[
                CompareOp::Equal,
                CompareOp::Greater,
                CompareOp::Less,
                CompareOp::NotEqual,
            ]
            .choose(&mut self.rng)
            .unwrap(),
            target,
        }
    }

    fn txn_ops(&mut self, m: &Model, depth: u32, max: usize) -> Vec<TxnOpSpec> {
        let n = self.rng.gen_range(0..=max);
        let mut written: Vec<Vec<u8>> = Vec::new();
        let mut ops = Vec::with_capacity(n);
        for _ in 0..n {
            let op = match self.rng.gen_range(0..10) {
                0..=3 => {
                    let mut put = self.put(true);
                    // Mostly distinct keys, so most txns are valid; the rest hit the duplicate
                    // check on purpose.
                    if self.rng.gen_bool(0.9) {
                        for _ in 0..3 {
                            if !written.contains(&put.key.0) {
                                break;
                            }
                            put.key = self.key();
                        }
                    }
                    written.push(put.key.0.clone());
                    TxnOpSpec::Put(put)
                }
                4..=6 => TxnOpSpec::Range(self.range(m)),
                7 | 8 => TxnOpSpec::Delete(self.delete(true)),
                _ if depth < 2 => TxnOpSpec::Txn(self.txn(m, depth + 1)),
                _ => TxnOpSpec::Range(self.range(m)),
            };
            ops.push(op);
        }
        ops
    }

    fn txn(&mut self, m: &Model, depth: u32) -> TxnSpec {
        let compares = (0..self.rng.gen_range(0..=3))
            .map(|_| self.compare(m))
            .collect();
        let max_ops = if depth == 0 { 5 } else { 3 };
        TxnSpec {
            compares,
            success: self.txn_ops(m, depth, max_ops),
            failure: self.txn_ops(m, depth, max_ops),
        }
    }

    fn op(&mut self, m: &Model) -> Op {
        match self.rng.gen_range(0..100) {
            0..=29 => Op::Put(self.put(false)),
            30..=59 => Op::Range(self.range(m)),
            60..=71 => Op::Delete(self.delete(false)),
            72 if self.rng.gen_bool(0.2) => {
                // Over etcd's default --max-txn-ops (128) in one of the three lists.
                let mut t = self.txn(m, 0);
                let reads = (0..129)
                    .map(|_| TxnOpSpec::Range(self.plain_get()))
                    .collect();
                match self.rng.gen_range(0..2) {
                    0 => t.success = reads,
                    _ => t.failure = reads,
                }
                Op::Txn(t)
            }
            72..=97 => Op::Txn(self.txn(m, 0)),
            _ => Op::Compact {
                revision: match self.rng.gen_range(0..8) {
                    0 => m.compacted,     // already compacted
                    1 => m.compacted - 1, // below the compaction (or 0 / -1 on a fresh store)
                    2 => m.revision + 1,  // future
                    3 => m.revision,      // all history
                    // Somewhere behind the head, so older revisions stay readable for a while.
                    _ => {
                        let low = m.compacted.max(1);
                        self.rng.gen_range(low..=(m.revision - 30).max(low))
                    }
                },
                physical: self.rng.gen_bool(0.5),
            },
        }
    }
}

fn apply_end_get(options: GetOptions, end: &End) -> GetOptions {
    match end {
        End::None => options,
        End::Prefix => options.with_prefix(),
        End::FromKey => options.with_from_key(),
        End::AllKeys => options.with_all_keys(),
        End::Explicit(e) => options.with_range(e.0.clone()),
    }
}

fn get_options(spec: &RangeSpec) -> GetOptions {
    let mut o = apply_end_get(GetOptions::new(), &spec.end);
    if spec.revision != 0 {
        o = o.with_revision(spec.revision);
    }
    if spec.limit != 0 {
        o = o.with_limit(spec.limit);
    }
    if let Some((target, order)) = spec.sort {
        o = o.with_sort(target, order);
    }
    if spec.serializable {
        o = o.with_serializable();
    }
    if spec.keys_only {
        o = o.with_keys_only();
    }
    if spec.count_only {
        o = o.with_count_only();
    }
    if spec.min_mod != 0 {
        o = o.with_min_mod_revision(spec.min_mod);
    }
    if spec.max_mod != 0 {
        o = o.with_max_mod_revision(spec.max_mod);
    }
    if spec.min_create != 0 {
        o = o.with_min_create_revision(spec.min_create);
    }
    if spec.max_create != 0 {
        o = o.with_max_create_revision(spec.max_create);
    }
    o
}

fn put_options(spec: &PutSpec) -> PutOptions {
    let mut o = PutOptions::new();
    if spec.prev_kv {
        o = o.with_prev_key();
    }
    if spec.ignore_value {
        o = o.with_ignore_value();
    }
    o
}

fn delete_options(spec: &DeleteSpec) -> DeleteOptions {
    let mut o = match &spec.end {
        End::None => DeleteOptions::new(),
        End::Prefix => DeleteOptions::new().with_prefix(),
        End::FromKey => DeleteOptions::new().with_from_key(),
        End::AllKeys => DeleteOptions::new().with_all_keys(),
        End::Explicit(e) => DeleteOptions::new().with_range(e.0.clone()),
    };
    if spec.prev_kv {
        o = o.with_prev_key();
    }
    o
}

fn compare(spec: &CompareSpec) -> Compare {
    let key = match spec.end {
        End::AllKeys => vec![0],
        _ => spec.key.0.clone(),
    };
    let c = match &spec.target {
        CompareTarget::Version(v) => Compare::version(key, spec.op, *v),
        CompareTarget::Create(v) => Compare::create_revision(key, spec.op, *v),
        CompareTarget::Mod(v) => Compare::mod_revision(key, spec.op, *v),
        CompareTarget::Value(v) => Compare::value(key, spec.op, v.0.clone()),
        CompareTarget::Lease(v) => Compare::lease(key, spec.op, *v),
    };
    match &spec.end {
        End::None => c,
        End::Prefix => c.with_prefix(),
        // Compare has no from-key/all-keys helpers; spell them out as etcd-client would.
        End::FromKey | End::AllKeys => c.with_range(vec![0]),
        End::Explicit(e) => c.with_range(e.0.clone()),
    }
}

fn txn_op(spec: &TxnOpSpec) -> TxnOp {
    match spec {
        TxnOpSpec::Put(p) => TxnOp::put(p.key.0.clone(), p.value.0.clone(), Some(put_options(p))),
        TxnOpSpec::Range(r) => TxnOp::get(r.key.0.clone(), Some(get_options(r))),
        TxnOpSpec::Delete(d) => TxnOp::delete(d.key.0.clone(), Some(delete_options(d))),
        TxnOpSpec::Txn(t) => TxnOp::txn(txn(t)),
    }
}

fn txn(spec: &TxnSpec) -> Txn {
    Txn::new()
        .when(spec.compares.iter().map(compare).collect::<Vec<_>>())
        .and_then(spec.success.iter().map(txn_op).collect::<Vec<_>>())
        .or_else(spec.failure.iter().map(txn_op).collect::<Vec<_>>())
}

/// A response with everything that must match. Top-level cluster/member ids and the raft term
/// differ between two clusters, so only whether they are set is kept; sub-responses of a txn
/// must match exactly (etcd leaves them zero).
#[derive(Debug, PartialEq)]
enum Outcome {
    Put {
        header: Option<Header>,
        prev_kv: Option<Kv>,
    },
    Range {
        header: Option<Header>,
        kvs: Vec<Kv>,
        more: bool,
        count: i64,
    },
    Delete {
        header: Option<Header>,
        deleted: i64,
        prev_kvs: Vec<Kv>,
    },
    Txn {
        header: Option<Header>,
        succeeded: bool,
        responses: Vec<Outcome>,
    },
    Compact {
        header: Option<Header>,
    },
    GrpcError {
        code: String,
        message: String,
    },
    OtherError(String),
}

#[derive(Debug, PartialEq)]
struct Header {
    revision: i64,
    cluster_id: IdField,
    member_id: IdField,
    raft_term: IdField,
}

#[derive(Debug, PartialEq)]
enum IdField {
    Zero,
    Set,
    Exact(u64),
}

#[derive(Debug, PartialEq)]
struct Kv {
    key: Bytes,
    value: Bytes,
    create_revision: i64,
    mod_revision: i64,
    version: i64,
    lease: i64,
}

impl PartialEq for Bytes {
    fn eq(&self, other: &Self) -> bool {
        self.0 == other.0
    }
}

fn header(h: Option<&ResponseHeader>, top_level: bool) -> Option<Header> {
    let id = |v: u64| match (top_level, v) {
        (_, 0) => IdField::Zero,
        (true, _) => IdField::Set,
        (false, v) => IdField::Exact(v),
    };
    h.map(|h| Header {
        revision: h.revision(),
        cluster_id: id(h.cluster_id()),
        member_id: id(h.member_id()),
        raft_term: id(h.raft_term()),
    })
}

fn kv(kv: &KeyValue) -> Kv {
    Kv {
        key: b(kv.key()),
        value: b(kv.value()),
        create_revision: kv.create_revision(),
        mod_revision: kv.mod_revision(),
        version: kv.version(),
        lease: kv.lease(),
    }
}

fn error(e: etcd_client::Error) -> Outcome {
    match grpc_error(&e) {
        Some((code, message)) => Outcome::GrpcError { code, message },
        None => Outcome::OtherError(e.to_string()),
    }
}

fn txn_outcome(resp: &etcd_client::TxnResponse, top_level: bool) -> Outcome {
    Outcome::Txn {
        header: header(resp.header(), top_level),
        succeeded: resp.succeeded(),
        responses: resp
            .op_responses()
            .iter()
            .map(|op| match op {
                TxnOpResponse::Put(p) => Outcome::Put {
                    header: header(p.header(), false),
                    prev_kv: p.prev_key().map(kv),
                },
                TxnOpResponse::Get(g) => Outcome::Range {
                    header: header(g.header(), false),
                    kvs: g.kvs().iter().map(kv).collect(),
                    more: g.more(),
                    count: g.count(),
                },
                TxnOpResponse::Delete(d) => Outcome::Delete {
                    header: header(d.header(), false),
                    deleted: d.deleted(),
                    prev_kvs: d.prev_kvs().iter().map(kv).collect(),
                },
                TxnOpResponse::Txn(t) => txn_outcome(t, false),
            })
            .collect(),
    }
}

async fn execute(client: &mut Client, op: &Op) -> Outcome {
    match op {
        Op::Put(p) => match client
            .put(p.key.0.clone(), p.value.0.clone(), Some(put_options(p)))
            .await
        {
            Ok(r) => Outcome::Put {
                header: header(r.header(), true),
                prev_kv: r.prev_key().map(kv),
            },
            Err(e) => error(e),
        },
        Op::Range(spec) => match client
            .get(spec.key.0.clone(), Some(get_options(spec)))
            .await
        {
            Ok(r) => Outcome::Range {
                header: header(r.header(), true),
                kvs: r.kvs().iter().map(kv).collect(),
                more: r.more(),
                count: r.count(),
            },
            Err(e) => error(e),
        },
        Op::Delete(d) => match client
            .delete(d.key.0.clone(), Some(delete_options(d)))
            .await
        {
            Ok(r) => Outcome::Delete {
                header: header(r.header(), true),
                deleted: r.deleted(),
                prev_kvs: r.prev_kvs().iter().map(kv).collect(),
            },
            Err(e) => error(e),
        },
        Op::Txn(t) => match client.txn(txn(t)).await {
            Ok(r) => txn_outcome(&r, true),
            Err(e) => error(e),
        },
        Op::Compact { revision, physical } => {
            let options = physical.then(|| CompactionOptions::new().with_physical());
            match client.compact(*revision, options).await {
                Ok(r) => Outcome::Compact {
                    header: header(r.header(), true),
                },
                Err(e) => error(e),
            }
        }
    }
}

fn top_revision(outcome: &Outcome) -> Option<i64> {
    let h = match outcome {
        Outcome::Put { header, .. }
        | Outcome::Range { header, .. }
        | Outcome::Delete { header, .. }
        | Outcome::Txn { header, .. }
        | Outcome::Compact { header } => header.as_ref(),
        _ => None,
    };
    h.map(|h| h.revision)
}

/// Answers from etcd that are not a verdict on the request: transport failures surface as gRPC
/// Unavailable (etcd-client maps connection errors to a status) and the like.
fn reference_failure(outcome: &Outcome) -> Option<String> {
    match outcome {
        Outcome::OtherError(e) => Some(e.clone()),
        Outcome::GrpcError { code, message }
            if matches!(
                code.as_str(),
                "Unavailable" | "Unknown" | "Cancelled" | "DeadlineExceeded" | "Internal"
            ) =>
        {
            Some(format!("{code}: {message}"))
        }
        _ => None,
    }
}

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    match std::env::var(name) {
        Ok(v) => v
            .parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a valid number")),
        Err(_) => default,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn random_kv_workload_matches_etcd() {
    require_etcd();
    let seed: u64 = env_or("OXCD_DIFF_SEED", rand::random());
    let ops: usize = env_or("OXCD_DIFF_OPS", 2000);
    println!("differential seed {seed} ({ops} ops); replay with OXCD_DIFF_SEED={seed}");

    let (etcd, oxcd) = tokio::join!(Server::start(Flavor::Etcd), Server::start(Flavor::Oxcd));
    let mut etcd_client = etcd.client().await;
    let mut oxcd_client = oxcd.client().await;

    let mut generator = Generator {
        rng: StdRng::seed_from_u64(seed),
    };
    let mut model = Model {
        revision: 1,
        compacted: 0,
    };
    let mut counts = std::collections::BTreeMap::<String, usize>::new();
    let mut errors = 0;
    for index in 0..ops {
        let op = generator.op(&model);
        let (expected, actual) = tokio::join!(
            execute(&mut etcd_client, &op),
            execute(&mut oxcd_client, &op)
        );
        if let Some(failure) = reference_failure(&expected) {
            panic!(
                "etcd itself failed op #{index} ({failure}); it probably crashed or the harness \
                 is broken, so nothing was compared (seed {seed})\nop: {op:#?}"
            );
        }
        if expected != actual {
            panic!(
                "oxcd differs from etcd at op #{index} (seed {seed}; replay with \
                 OXCD_DIFF_SEED={seed} OXCD_DIFF_OPS={})\nop: {op:#?}\netcd: {expected:#?}\noxcd: {actual:#?}",
                index + 1
            );
        }
        if let Some(revision) = top_revision(&expected) {
            model.revision = revision;
        }
        if let (Op::Compact { revision, .. }, Outcome::Compact { .. }) = (&op, &expected) {
            model.compacted = *revision;
        }
        let kind = match (&op, &expected) {
            (_, Outcome::GrpcError { message, .. }) => {
                errors += 1;
                message.clone()
            }
            (Op::Put(_), _) => "put".into(),
            (Op::Range(_), _) => "range".into(),
            (Op::Delete(_), _) => "delete".into(),
            (
                Op::Txn(_),
                Outcome::Txn {
                    succeeded: true, ..
                },
            ) => "txn succeeded".into(),
            (Op::Txn(_), _) => "txn failed".into(),
            (Op::Compact { .. }, _) => "compact".into(),
        };
        *counts.entry(kind).or_default() += 1;
    }
    println!(
        "all {ops} ops matched; final revision {}; {counts:#?}",
        model.revision
    );
    assert!(
        ops < 200 || errors < ops / 2,
        "most ops failed; the generator is producing mostly invalid requests: {counts:#?}"
    );
}
