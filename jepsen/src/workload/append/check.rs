//! The list-append checker: strict serializability of transactions over append-only lists, the
//! way Elle checks it (Kingsbury and Alvaro, "Elle: Inferring Isolation Anomalies from
//! Experimental Observations", VLDB 2020).
//!
//! Since every appended value is unique and lists only grow, a read names every transaction
//! whose append it saw, in order. The checker:
//!
//! 1. derives each key's *version order* from the longest ok read of it. Every other ok read of
//!    the key must be a prefix of it (else *incompatible order*); every element read must have
//!    been appended by a transaction that did not fail (else *garbage read*: never appended, or
//!    appended only by a failed transaction, Adya's G1a); no read may hold an element twice
//!    (*duplicate*);
//! 2. checks each ok transaction on its own (*internal*): a read after the transaction's own
//!    appends to a key must end with them, and equal the transaction's earlier read of the key
//!    plus those appends when there was one;
//! 3. flags a read ending in an element that its transaction followed with another append to
//!    the same key (*G1b*, intermediate read: appends commit together);
//! 4. checks durability against the *final reads*: the ok read-only transactions invoked after
//!    every transaction with appends completed (the runner's reads of every key from every
//!    member after recovery). For each key they must agree (*final reads disagree*), and every
//!    append of an ok transaction must be in them (*lost append*). A history without final
//!    reads of a key skips this for that key;
//! 5. builds the dependency graph over the ok transactions and the unknown-outcome (`info`)
//!    ones whose appends were observed (which therefore committed), with Adya's edges inferred
//!    from the version orders and the transactions' *external* reads (each key's first read,
//!    before the transaction appends to it):
//!    - `ww`: T1 appended an element, T2 the next one in the key's version order;
//!    - `wr`: T2 read a list whose last element T1 appended;
//!    - `rw` (anti-dependency): T1 read a list, T2 appended the element after its end;
//!    - `rt` (real time, for strict serializability): T1 completed before T2 was invoked.
//!
//!    Any cycle is an anomaly. The strongly connected components are found with Tarjan's
//!    algorithm; in each, the checker looks for a short cycle (breadth-first search inside the
//!    component) with the least severe edges first, and names it as Elle does: `G0` (only ww),
//!    `G1c` (ww and wr), `G-single` (exactly one rw), `G2-item` (more rw), each with
//!    `-realtime` when the cycle needs a real-time edge. A cycle is reported with its
//!    transactions and, for each edge, what it was inferred from.
//!
//! # Real-time edges
//!
//! Linking every transaction to every one invoked after it completed would take quadratic time
//! and space. As in Elle, the edges are a transitive reduction of sorts: a sweep over invokes
//! and completions in time order keeps a *frontier*, the completed transactions that no
//! completed transaction follows in real time yet. An invoked transaction is linked from every
//! transaction in the frontier; a completing one replaces its own predecessors in the frontier.
//! Whatever completed before a transaction's invoke reaches it through a path of such edges,
//! and every edge is a real-time order, so cycles are the same as with the full order, while
//! the frontier (and so each transaction's incoming real-time edges) stays about as large as the
//! number of clients. Unknown-outcome transactions may take effect at any time after their
//! invoke: they get incoming real-time edges only.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::fmt;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{parse_txn, MicroOp};
use crate::checker::{CheckOptions, Verdict};
use crate::history::{Operation, Status, F};

/// The kinds of anomaly, from data problems to cycles, least severe cycle first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AnomalyKind {
    /// A read holds an element twice.
    Duplicate,
    /// A read holds an element no transaction appended, or only a failed one (G1a).
    GarbageRead,
    /// Two reads of a key where neither is a prefix of the other.
    IncompatibleOrder,
    /// A transaction's read disagrees with its own earlier reads and appends.
    Internal,
    /// A read saw some but not all of a transaction's appends to a key (G1b).
    IntermediateRead,
    /// The final reads of a key differ.
    FinalReadsDisagree,
    /// An ok transaction's append is missing from the final reads.
    LostAppend,
    G0,
    G1c,
    GSingle,
    G2Item,
    G0Realtime,
    G1cRealtime,
    GSingleRealtime,
    G2ItemRealtime,
}

impl fmt::Display for AnomalyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AnomalyKind::Duplicate => "duplicate",
            AnomalyKind::GarbageRead => "garbage read",
            AnomalyKind::IncompatibleOrder => "incompatible order",
            AnomalyKind::Internal => "internal",
            AnomalyKind::IntermediateRead => "G1b (intermediate read)",
            AnomalyKind::FinalReadsDisagree => "final reads disagree",
            AnomalyKind::LostAppend => "lost append",
            AnomalyKind::G0 => "G0",
            AnomalyKind::G1c => "G1c",
            AnomalyKind::GSingle => "G-single",
            AnomalyKind::G2Item => "G2-item",
            AnomalyKind::G0Realtime => "G0-realtime",
            AnomalyKind::G1cRealtime => "G1c-realtime",
            AnomalyKind::GSingleRealtime => "G-single-realtime",
            AnomalyKind::G2ItemRealtime => "G2-item-realtime",
        })
    }
}

impl AnomalyKind {
    /// Whether this is a cycle in the dependency graph (G0 and worse).
    pub fn is_cycle(self) -> bool {
        self >= AnomalyKind::G0
    }
}

#[derive(Clone, Debug)]
pub struct Anomaly {
    pub kind: AnomalyKind,
    /// A readable account: the transactions involved and what was wrong.
    pub text: String,
    /// The operations involved (indices into the checked operations).
    pub ops: Vec<usize>,
}

#[derive(Clone, Debug)]
pub struct AppendReport {
    /// Transactions in the history, final reads included.
    pub txns: usize,
    /// Transactions in the dependency graph, and its edges (of all kinds).
    pub graph_nodes: usize,
    pub graph_edges: usize,
    pub anomalies: Vec<Anomaly>,
    /// Strongly connected components (each holds a cycle) not searched for a cycle to show
    /// because the check's time ran out.
    pub unexplained_cycles: usize,
}

impl AppendReport {
    pub fn verdict(&self) -> Verdict {
        if self.anomalies.is_empty() && self.unexplained_cycles == 0 {
            Verdict::Valid
        } else {
            Verdict::Invalid
        }
    }

    /// How many anomalies of each kind were found.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts: BTreeMap<AnomalyKind, usize> = BTreeMap::new();
        for a in &self.anomalies {
            *counts.entry(a.kind).or_default() += 1;
        }
        let mut named: BTreeMap<String, usize> = counts
            .into_iter()
            .map(|(k, n)| (k.to_string(), n))
            .collect();
        if self.unexplained_cycles > 0 {
            named.insert("cycle (not searched)".to_owned(), self.unexplained_cycles);
        }
        named
    }

    /// Whether an anomaly of `kind` was found.
    pub fn has(&self, kind: AnomalyKind) -> bool {
        self.anomalies.iter().any(|a| a.kind == kind)
    }
}

/// Anomalies of one kind shown in full; the rest are counted.
const SHOWN_PER_KIND: usize = 10;

impl fmt::Display for AppendReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "{} transactions; dependency graph of {} transactions and {} edges",
            self.txns, self.graph_nodes, self.graph_edges
        )?;
        if self.verdict() == Verdict::Valid {
            return writeln!(f, "no anomalies: strictly serializable");
        }
        let mut by_kind: BTreeMap<AnomalyKind, Vec<&Anomaly>> = BTreeMap::new();
        for a in &self.anomalies {
            by_kind.entry(a.kind).or_default().push(a);
        }
        for (kind, anomalies) in by_kind {
            writeln!(f, "\n== {kind}: {} ==", anomalies.len())?;
            for a in anomalies.iter().take(SHOWN_PER_KIND) {
                writeln!(f, "{}", a.text)?;
            }
            if anomalies.len() > SHOWN_PER_KIND {
                writeln!(f, "... and {} more", anomalies.len() - SHOWN_PER_KIND)?;
            }
        }
        if self.unexplained_cycles > 0 {
            writeln!(
                f,
                "\n{} more strongly connected components (cycles) were not searched before the \
                 time limit",
                self.unexplained_cycles
            )?;
        }
        Ok(())
    }
}

const WW: u8 = 1;
const WR: u8 = 2;
const RW: u8 = 4;
const RT: u8 = 8;
const ALL: u8 = WW | WR | RW | RT;

fn kind_name(kind: u8) -> &'static str {
    match kind {
        WW => "ww",
        WR => "wr",
        RW => "rw",
        _ => "rt",
    }
}

/// A micro-operation with its key interned.
#[derive(Clone, Debug)]
enum Mop {
    Append(usize, i64),
    /// `None` unless the transaction is ok.
    Read(usize, Option<Vec<i64>>),
}

struct Txn<'a> {
    /// Index in the checked operations.
    index: usize,
    op: &'a Operation,
    mops: Vec<Mop>,
    /// The first read of each key that comes before the transaction's own appends to it, as
    /// (key, index in `mops`); only for ok transactions.
    external: Vec<(usize, usize)>,
}

impl Txn<'_> {
    fn read(&self, mop: usize) -> &[i64] {
        match &self.mops[mop] {
            Mop::Read(_, Some(list)) => list,
            _ => &[],
        }
    }

    fn appends(&self) -> impl Iterator<Item = (usize, i64)> + '_ {
        self.mops.iter().filter_map(|m| match m {
            Mop::Append(k, v) => Some((*k, *v)),
            Mop::Read(..) => None,
        })
    }

    fn has_appends(&self) -> bool {
        self.appends().next().is_some()
    }
}

/// One key's version order and what each position tells.
#[derive(Default)]
struct Order {
    elements: Vec<i64>,
    /// Each element's first position.
    position: HashMap<i64, usize>,
    /// For each position, the nearest graph node at or before it that appended an element
    /// (garbage and repeated elements have none).
    prev_node: Vec<Option<u32>>,
    /// For each position, the nearest such node at or after it; one entry longer, `None`.
    next_node: Vec<Option<u32>>,
}

impl Order {
    fn is_prefix(&self, list: &[i64]) -> bool {
        list.len() <= self.elements.len() && self.elements[..list.len()] == *list
    }
}

struct Analysis<'a> {
    keys: Vec<String>,
    txns: Vec<Txn<'a>>,
    /// Which transaction appended each (key, element).
    writer: HashMap<(usize, i64), usize>,
    orders: Vec<Order>,
    /// Transaction of each graph node, and node of each transaction.
    node_txn: Vec<usize>,
    txn_node: Vec<Option<u32>>,
    anomalies: Vec<Anomaly>,
}

/// Checks a history of `txn` operations over append-only lists for strict serializability.
/// Errors on operations that are not such transactions, and on a value appended twice to a key.
///
/// The check takes about linear time in the history, except for finding cycles to show; past the timeout,
/// components still to be searched are only counted (the verdict is invalid all the same).
pub fn check_append(ops: &[Operation], options: &CheckOptions) -> Result<AppendReport> {
    let deadline = options.timeout.map(|t| Instant::now() + t);
    let mut analysis = Analysis::parse(ops)?;
    analysis.version_orders();
    analysis.internal();
    analysis.intermediate_reads();
    analysis.final_reads();
    analysis.index_nodes();
    let graph = analysis.graph();
    let components = tarjan(&graph, ALL);
    let mut unexplained = 0;
    for component in &components {
        if deadline.is_some_and(|d| Instant::now() > d) {
            unexplained += 1;
            continue;
        }
        let anomaly = analysis.describe_cycle(&cycle_in(&graph, component));
        analysis.anomalies.push(anomaly);
    }
    analysis.anomalies.sort_by_key(|a| a.kind);
    Ok(AppendReport {
        txns: analysis.txns.len(),
        graph_nodes: graph.len(),
        graph_edges: graph.targets.len(),
        anomalies: analysis.anomalies,
        unexplained_cycles: unexplained,
    })
}

impl<'a> Analysis<'a> {
    fn parse(ops: &'a [Operation]) -> Result<Analysis<'a>> {
        let mut keys: Vec<String> = Vec::new();
        let mut key_ids: HashMap<String, usize> = HashMap::new();
        let mut txns = Vec::with_capacity(ops.len());
        for (index, op) in ops.iter().enumerate() {
            let what = || {
                format!(
                    "process {}'s {} invoked at {}",
                    op.process,
                    op.f,
                    format_time(op.invoke_time)
                )
            };
            if op.f != F::Txn {
                bail!("{} is not a list-append transaction", what());
            }
            match (op.status, op.complete_time) {
                (_, Some(t)) if t < op.invoke_time => {
                    bail!("{} completes before that, at {}", what(), format_time(t))
                }
                (Status::Ok | Status::Fail, None) => {
                    bail!("{} has an outcome but no completion", what())
                }
                _ => {}
            }
            let ok = op.status == Status::Ok;
            let source = if ok { &op.result } else { &op.value };
            let parsed = parse_txn(source).with_context(what)?;
            let mut mops = Vec::with_capacity(parsed.len());
            for mop in parsed {
                let mut id = |key: String, keys: &mut Vec<String>| {
                    *key_ids.entry(key.clone()).or_insert_with(|| {
                        keys.push(key);
                        keys.len() - 1
                    })
                };
                mops.push(match mop {
                    MicroOp::Append(key, v) => Mop::Append(id(key, &mut keys), v),
                    MicroOp::Read(key, list) => {
                        if ok && list.is_none() {
                            bail!("{} is ok but a read of {key:?} has no list", what());
                        }
                        Mop::Read(id(key, &mut keys), if ok { list } else { None })
                    }
                });
            }
            let mut external = Vec::new();
            if ok {
                let mut touched = HashSet::new();
                for (i, mop) in mops.iter().enumerate() {
                    match mop {
                        Mop::Read(k, _) if touched.insert(*k) => external.push((*k, i)),
                        Mop::Read(..) => {}
                        Mop::Append(k, _) => {
                            touched.insert(*k);
                        }
                    }
                }
            }
            txns.push(Txn {
                index,
                op,
                mops,
                external,
            });
        }
        let mut writer = HashMap::new();
        for (t, txn) in txns.iter().enumerate() {
            for (k, v) in txn.appends() {
                if let Some(&other) = writer.get(&(k, v)) {
                    let o: &Txn = &txns[other];
                    bail!(
                        "{v} is appended to {:?} twice (by process {}'s transaction invoked at \
                         {}, and by process {}'s invoked at {}): appended values must be unique",
                        keys[k],
                        o.op.process,
                        format_time(o.op.invoke_time),
                        txn.op.process,
                        format_time(txn.op.invoke_time)
                    );
                }
                writer.insert((k, v), t);
            }
        }
        let orders = (0..keys.len()).map(|_| Order::default()).collect();
        Ok(Analysis {
            keys,
            txns,
            writer,
            orders,
            node_txn: Vec::new(),
            txn_node: Vec::new(),
            anomalies: Vec::new(),
        })
    }

    fn status(&self, t: usize) -> Status {
        self.txns[t].op.status
    }

    /// Every ok read: (transaction, micro-operation, key).
    fn reads(&self) -> impl Iterator<Item = (usize, usize, usize)> + '_ {
        self.txns.iter().enumerate().flat_map(|(t, txn)| {
            txn.mops
                .iter()
                .enumerate()
                .filter_map(move |(i, m)| match m {
                    Mop::Read(k, Some(_)) => Some((t, i, *k)),
                    _ => None,
                })
        })
    }

    fn push(&mut self, kind: AnomalyKind, text: String, txns: &[usize]) {
        let ops = txns.iter().map(|&t| self.txns[t].index).collect();
        self.anomalies.push(Anomaly { kind, text, ops });
    }

    /// Step 1: version orders, incompatible orders, duplicates and garbage.
    fn version_orders(&mut self) {
        let mut longest: Vec<Option<(usize, usize)>> = vec![None; self.keys.len()];
        for (t, i, k) in self.reads() {
            let len = self.txns[t].read(i).len();
            if longest[k].is_none_or(|(lt, li)| self.txns[lt].read(li).len() < len) {
                longest[k] = Some((t, i));
            }
        }
        for (k, source) in longest.iter().enumerate() {
            if let Some((t, i)) = *source {
                let elements = self.txns[t].read(i).to_vec();
                let mut position = HashMap::with_capacity(elements.len());
                for (p, &e) in elements.iter().enumerate() {
                    position.entry(e).or_insert(p);
                }
                self.orders[k].elements = elements;
                self.orders[k].position = position;
            }
        }

        // Incompatible reads: one example (against the longest read) per key, with a count.
        let mut incompatible: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
        let mut duplicates: BTreeMap<(usize, i64), usize> = BTreeMap::new();
        let mut garbage: BTreeMap<(usize, i64), usize> = BTreeMap::new();
        for (t, i, k) in self.reads() {
            let list = self.txns[t].read(i);
            if !self.orders[k].is_prefix(list) {
                incompatible.entry(k).or_insert((t, i, 0)).2 += 1;
            }
            let mut seen = HashSet::with_capacity(list.len());
            for &e in list {
                if !seen.insert(e) {
                    duplicates.entry((k, e)).or_insert(t);
                }
                let appended = self
                    .writer
                    .get(&(k, e))
                    .is_some_and(|&w| self.status(w) != Status::Fail);
                if !appended {
                    garbage.entry((k, e)).or_insert(t);
                }
            }
        }
        for (k, (t, i, count)) in incompatible {
            let (lt, li) = longest[k].expect("a key with reads has a longest one");
            let others = match count {
                1 => String::new(),
                n => format!(" ({} other reads of it are not prefixes either)", n - 1),
            };
            let text = format!(
                "key {:?}: these reads are not prefixes of one another, so no order of appends \
                 explains both{others}:\n  {}\n    read {}\n  {}\n    read {}",
                self.keys[k],
                self.show_txn(lt),
                show_list(self.txns[lt].read(li)),
                self.show_txn(t),
                show_list(self.txns[t].read(i)),
            );
            self.push(AnomalyKind::IncompatibleOrder, text, &[lt, t]);
        }
        for ((k, e), t) in duplicates {
            let text = format!(
                "key {:?}: element {e} appears more than once in a read\n  {}",
                self.keys[k],
                self.show_txn(t)
            );
            self.push(AnomalyKind::Duplicate, text, &[t]);
        }
        for ((k, e), t) in garbage {
            let (why, involved) = match self.writer.get(&(k, e)) {
                Some(&w) => (
                    format!(
                        "only a failed transaction appended it:\n  {}",
                        self.show_txn(w)
                    ),
                    vec![t, w],
                ),
                None => ("no transaction appended it".to_owned(), vec![t]),
            };
            let text = format!(
                "key {:?}: a read holds {e}, but {why}\n  read by {}",
                self.keys[k],
                self.show_txn(t)
            );
            self.push(AnomalyKind::GarbageRead, text, &involved);
        }
    }

    /// Step 2: each ok transaction's reads against its own earlier reads and appends.
    fn internal(&mut self) {
        let mut found = Vec::new();
        for (t, txn) in self.txns.iter().enumerate() {
            if txn.op.status != Status::Ok {
                continue;
            }
            // Per key: the list the transaction must see, when known from an earlier read,
            // else its own appends so far, which must end the list.
            let mut known: HashMap<usize, (bool, Vec<i64>)> = HashMap::new();
            for mop in &txn.mops {
                match mop {
                    Mop::Append(k, v) => known.entry(*k).or_insert((false, Vec::new())).1.push(*v),
                    Mop::Read(k, list) => {
                        let list = list.as_deref().unwrap_or(&[]);
                        if let Some((whole, expected)) = known.get(k) {
                            let fine = if *whole {
                                list == expected.as_slice()
                            } else {
                                list.ends_with(expected)
                            };
                            if !fine {
                                let what = if *whole {
                                    format!("expected {}", show_list(expected))
                                } else {
                                    format!(
                                        "expected a list ending with its own appends {}",
                                        show_list(expected)
                                    )
                                };
                                found.push((t, *k, what, list.to_vec()));
                            }
                        }
                        known.insert(*k, (true, list.to_vec()));
                    }
                }
            }
        }
        for (t, k, expected, list) in found {
            let text = format!(
                "key {:?}: a transaction read {}, but given its own earlier micro-operations it \
                 {expected}\n  {}",
                self.keys[k],
                show_list(&list),
                self.show_txn(t)
            );
            self.push(AnomalyKind::Internal, text, &[t]);
        }
    }

    /// Step 3: reads that end inside another transaction's appends to a key.
    fn intermediate_reads(&mut self) {
        let mut found = Vec::new();
        for (t, txn) in self.txns.iter().enumerate() {
            for &(k, i) in &txn.external {
                let Some(&last) = txn.read(i).last() else {
                    continue;
                };
                let Some(&w) = self.writer.get(&(k, last)) else {
                    continue;
                };
                if w == t || self.status(w) == Status::Fail {
                    continue;
                }
                let later = self.txns[w]
                    .appends()
                    .skip_while(|&(wk, v)| !(wk == k && v == last))
                    .skip(1)
                    .find(|&(wk, _)| wk == k);
                if let Some((_, next)) = later {
                    found.push((t, w, k, last, next));
                }
            }
        }
        for (t, w, k, last, next) in found {
            let text = format!(
                "key {:?}: a read ends with {last}, but the transaction that appended {last} \
                 appended {next} to it after that (appends of a transaction commit together)\n  \
                 reader {}\n  writer {}",
                self.keys[k],
                self.show_txn(t),
                self.show_txn(w)
            );
            self.push(AnomalyKind::IntermediateRead, text, &[t, w]);
        }
    }

    /// Step 4: durability against the final reads.
    fn final_reads(&mut self) {
        // After every transaction with appends completed (an unfinished one may still land).
        let mut after = 0;
        for txn in &self.txns {
            if txn.has_appends() && txn.op.status != Status::Fail {
                after = after.max(txn.op.complete_time.unwrap_or(u64::MAX));
            }
        }
        if after == u64::MAX {
            return;
        }
        // Per key, its final reads: (transaction, micro-operation).
        let mut finals: Vec<Vec<(usize, usize)>> = vec![Vec::new(); self.keys.len()];
        for (t, txn) in self.txns.iter().enumerate() {
            if txn.op.status == Status::Ok && !txn.has_appends() && txn.op.invoke_time > after {
                for &(k, i) in &txn.external {
                    finals[k].push((t, i));
                }
            }
        }
        let mut disagree = Vec::new();
        let mut lost = Vec::new();
        for (k, reads) in finals.iter().enumerate() {
            let Some(&(ft, fi)) = reads.first() else {
                continue;
            };
            let first = self.txns[ft].read(fi);
            if let Some(&(dt, di)) = reads.iter().find(|&&(t, i)| self.txns[t].read(i) != first) {
                disagree.push((k, ft, fi, dt, di));
            }
        }
        // Each key's final reads as sets, to look appends up in.
        let contents: Vec<Vec<HashSet<i64>>> = finals
            .iter()
            .map(|reads| {
                reads
                    .iter()
                    .map(|&(t, i)| self.txns[t].read(i).iter().copied().collect())
                    .collect()
            })
            .collect();
        for (w, txn) in self.txns.iter().enumerate() {
            if txn.op.status != Status::Ok {
                continue;
            }
            for (k, v) in txn.appends() {
                if let Some(r) = contents[k].iter().position(|c| !c.contains(&v)) {
                    lost.push((k, v, w, finals[k][r]));
                }
            }
        }
        for (k, ft, fi, dt, di) in disagree {
            let text = format!(
                "key {:?}: the final reads differ\n  {}\n    read {}\n  {}\n    read {}",
                self.keys[k],
                self.show_txn(ft),
                show_list(self.txns[ft].read(fi)),
                self.show_txn(dt),
                show_list(self.txns[dt].read(di))
            );
            self.push(AnomalyKind::FinalReadsDisagree, text, &[ft, dt]);
        }
        for (k, v, w, (rt, ri)) in lost {
            let text = format!(
                "key {:?}: {v} was appended by an ok transaction, but the final read {} lacks \
                 it\n  writer {}\n  final read {}",
                self.keys[k],
                show_list(self.txns[rt].read(ri)),
                self.show_txn(w),
                self.show_txn(rt)
            );
            self.push(AnomalyKind::LostAppend, text, &[w, rt]);
        }
    }

    /// The graph's nodes: ok transactions, and unknown-outcome ones whose appends were read.
    /// Also fills each version order's nearest-node tables.
    fn index_nodes(&mut self) {
        self.txn_node = vec![None; self.txns.len()];
        for (t, txn) in self.txns.iter().enumerate() {
            let include = match txn.op.status {
                Status::Ok => true,
                Status::Fail => false,
                Status::Info => txn
                    .appends()
                    .any(|(k, v)| self.orders[k].position.contains_key(&v)),
            };
            if include {
                self.txn_node[t] = Some(self.node_txn.len() as u32);
                self.node_txn.push(t);
            }
        }
        for k in 0..self.keys.len() {
            let order = &self.orders[k];
            let at: Vec<Option<u32>> = order
                .elements
                .iter()
                .enumerate()
                .map(|(p, e)| {
                    if order.position[e] != p {
                        return None;
                    }
                    let &w = self.writer.get(&(k, *e))?;
                    self.txn_node[w]
                })
                .collect();
            let n = at.len();
            let mut prev = vec![None; n];
            let mut next = vec![None; n + 1];
            let mut last = None;
            for p in 0..n {
                last = at[p].or(last);
                prev[p] = last;
            }
            for p in (0..n).rev() {
                next[p] = at[p].or(next[p + 1]);
            }
            self.orders[k].prev_node = prev;
            self.orders[k].next_node = next;
        }
    }

    fn graph(&self) -> Graph {
        let mut edges: Vec<(u32, u32, u8)> = Vec::new();
        // ww: consecutive appenders in each version order.
        for order in &self.orders {
            let mut prev: Option<u32> = None;
            for p in 0..order.elements.len() {
                let here = order.prev_node[p];
                if here != prev {
                    if let (Some(a), Some(b)) = (prev, here) {
                        edges.push((a, b, WW));
                    }
                    prev = here;
                }
            }
        }
        // wr and rw, from external reads that fit the version order.
        for (node, &t) in self.node_txn.iter().enumerate() {
            let node = node as u32;
            let txn = &self.txns[t];
            for &(k, i) in &txn.external {
                let order = &self.orders[k];
                let list = txn.read(i);
                if !order.is_prefix(list) {
                    continue;
                }
                let p = list.len();
                if p > 0 {
                    if let Some(w) = order.prev_node[p - 1] {
                        if w != node {
                            edges.push((w, node, WR));
                        }
                    }
                }
                if let Some(w) = order.next_node[p] {
                    if w != node {
                        edges.push((node, w, RW));
                    }
                }
            }
        }
        // rt: the frontier sweep (see the module's documentation).
        let mut events: Vec<(u64, u8, u32)> = Vec::new();
        for (node, &t) in self.node_txn.iter().enumerate() {
            let op = self.txns[t].op;
            events.push((op.invoke_time, 0, node as u32));
            if op.status == Status::Ok {
                let complete = op.complete_time.expect("ok operations completed");
                events.push((complete, 1, node as u32));
            }
        }
        events.sort_unstable();
        let mut frontier: Vec<u32> = Vec::new();
        let mut predecessors: HashMap<u32, Vec<u32>> = HashMap::new();
        for (_, kind, node) in events {
            if kind == 0 {
                for &f in &frontier {
                    edges.push((f, node, RT));
                }
                predecessors.insert(node, frontier.clone());
            } else {
                let preds = predecessors.remove(&node).unwrap_or_default();
                frontier.retain(|f| !preds.contains(f));
                frontier.push(node);
            }
        }
        Graph::new(self.node_txn.len(), edges)
    }

    fn describe_cycle(&self, cycle: &[(u32, u8)]) -> Anomaly {
        let rw = cycle.iter().filter(|(_, k)| *k == RW).count();
        let wr = cycle.iter().any(|(_, k)| *k == WR);
        let rt = cycle.iter().any(|(_, k)| *k == RT);
        let kind = match (rw, wr, rt) {
            (0, false, false) => AnomalyKind::G0,
            (0, true, false) => AnomalyKind::G1c,
            (1, _, false) => AnomalyKind::GSingle,
            (_, _, false) => AnomalyKind::G2Item,
            (0, false, true) => AnomalyKind::G0Realtime,
            (0, true, true) => AnomalyKind::G1cRealtime,
            (1, _, true) => AnomalyKind::GSingleRealtime,
            (_, _, true) => AnomalyKind::G2ItemRealtime,
        };
        let names: Vec<String> = (1..=cycle.len()).map(|i| format!("T{i}")).collect();
        let mut text = format!(
            "a cycle of {} transactions ({}):\n",
            cycle.len(),
            cycle
                .iter()
                .map(|(_, k)| kind_name(*k))
                .collect::<Vec<_>>()
                .join(", ")
        );
        for (i, (node, _)) in cycle.iter().enumerate() {
            text += &format!(
                "  {} = {}\n",
                names[i],
                self.show_txn(self.node_txn[*node as usize])
            );
        }
        for (i, (node, kind)) in cycle.iter().enumerate() {
            let j = (i + 1) % cycle.len();
            let to = cycle[j].0;
            text += &format!(
                "  {} -{}-> {}: {}\n",
                names[i],
                kind_name(*kind),
                names[j],
                self.explain(*node, to, *kind, &names[i], &names[j])
            );
        }
        text.pop();
        let txns: Vec<usize> = cycle
            .iter()
            .map(|(n, _)| self.node_txn[*n as usize])
            .collect();
        let ops = txns.iter().map(|&t| self.txns[t].index).collect();
        Anomaly { kind, text, ops }
    }

    /// The first element of key `k`'s version order, from position `from` on, that the
    /// transaction of graph node `node` appended.
    fn first_appended_by(&self, node: u32, k: usize, from: usize) -> i64 {
        self.orders[k].elements[from..]
            .iter()
            .find(|e| self.writer.get(&(k, **e)).and_then(|&w| self.txn_node[w]) == Some(node))
            .copied()
            .unwrap_or_default()
    }

    /// What an edge of the graph was inferred from.
    fn explain(&self, from: u32, to: u32, kind: u8, a: &str, b: &str) -> String {
        let (ft, tt) = (self.node_txn[from as usize], self.node_txn[to as usize]);
        let (fop, top) = (self.txns[ft].op, self.txns[tt].op);
        match kind {
            WW => {
                for (k, v) in self.txns[ft].appends() {
                    let order = &self.orders[k];
                    let Some(&p) = order.position.get(&v) else {
                        continue;
                    };
                    if order.next_node[p + 1] == Some(to) {
                        let next = self.first_appended_by(to, k, p + 1);
                        return format!(
                            "{a} appended {v} to {:?}, and the next append in its order is \
                             {b}'s {next}",
                            self.keys[k]
                        );
                    }
                }
            }
            WR => {
                for &(k, i) in &self.txns[tt].external {
                    let order = &self.orders[k];
                    let list = self.txns[tt].read(i);
                    if !list.is_empty()
                        && order.is_prefix(list)
                        && order.prev_node[list.len() - 1] == Some(from)
                    {
                        return format!(
                            "{b} read {:?} = {}, which ends with {a}'s append",
                            self.keys[k],
                            show_list(list)
                        );
                    }
                }
            }
            RW => {
                for &(k, i) in &self.txns[ft].external {
                    let order = &self.orders[k];
                    let list = self.txns[ft].read(i);
                    if order.is_prefix(list) && order.next_node[list.len()] == Some(to) {
                        let next = self.first_appended_by(to, k, list.len());
                        return format!(
                            "{a} read {:?} = {}, without {b}'s {next}, which comes after it",
                            self.keys[k],
                            show_list(list)
                        );
                    }
                }
            }
            _ => {
                return format!(
                    "{a} completed at {}, before {b} was invoked at {}",
                    format_time(fop.complete_time.unwrap_or_default()),
                    format_time(top.invoke_time)
                )
            }
        }
        "(inferred, but its source was not found)".to_owned()
    }

    /// One transaction on one line: process, times, outcome, micro-operations.
    fn show_txn(&self, t: usize) -> String {
        let txn = &self.txns[t];
        let op = txn.op;
        let outcome = match (op.status, op.complete_time) {
            (_, None) => "no response".to_owned(),
            (Status::Ok, Some(c)) => format!("ok {}", format_time(c)),
            (Status::Fail, Some(c)) => format!("fail {}", format_time(c)),
            (Status::Info, Some(c)) => format!("info {}", format_time(c)),
        };
        let mops: Vec<String> = txn
            .mops
            .iter()
            .map(|m| match m {
                Mop::Append(k, v) => format!("append {} {v}", self.keys[*k]),
                Mop::Read(k, Some(list)) => format!("r {} {}", self.keys[*k], show_list(list)),
                Mop::Read(k, None) => format!("r {}", self.keys[*k]),
            })
            .collect();
        format!(
            "p{} invoked {}, {outcome}: {}",
            op.process,
            format_time(op.invoke_time),
            mops.join("; ")
        )
    }
}

/// Elements of a list shown; longer lists show their end.
const LIST_SHOWN: usize = 8;

fn show_list(list: &[i64]) -> String {
    let items: Vec<String> = list.iter().map(i64::to_string).collect();
    if list.len() <= LIST_SHOWN {
        format!("[{}]", items.join(", "))
    } else {
        format!(
            "[... {}] ({} elements)",
            items[list.len() - LIST_SHOWN + 2..].join(", "),
            list.len()
        )
    }
}

fn format_time(ns: u64) -> String {
    format!("{}.{:03}ms", ns / 1_000_000, ns / 1_000 % 1_000)
}

/// A directed graph in compressed rows, each edge with the kinds it has (a bit set).
struct Graph {
    offsets: Vec<usize>,
    targets: Vec<u32>,
    kinds: Vec<u8>,
}

impl Graph {
    /// From edges in any order; repeated edges merge their kinds. No self-loops are expected.
    fn new(nodes: usize, mut edges: Vec<(u32, u32, u8)>) -> Graph {
        edges.sort_unstable_by_key(|&(a, b, _)| (a, b));
        let mut offsets = vec![0; nodes + 1];
        let mut targets: Vec<u32> = Vec::with_capacity(edges.len());
        let mut kinds: Vec<u8> = Vec::with_capacity(edges.len());
        let mut last: Option<(u32, u32)> = None;
        for (a, b, kind) in edges {
            if last == Some((a, b)) {
                *kinds.last_mut().expect("an edge was pushed") |= kind;
                continue;
            }
            last = Some((a, b));
            targets.push(b);
            kinds.push(kind);
            offsets[a as usize + 1] += 1;
        }
        for i in 0..nodes {
            offsets[i + 1] += offsets[i];
        }
        Graph {
            offsets,
            targets,
            kinds,
        }
    }

    fn len(&self) -> usize {
        self.offsets.len() - 1
    }

    fn edges(&self, node: u32) -> impl Iterator<Item = (u32, u8)> + '_ {
        let range = self.offsets[node as usize]..self.offsets[node as usize + 1];
        self.targets[range.clone()]
            .iter()
            .copied()
            .zip(self.kinds[range].iter().copied())
    }

    fn kinds_between(&self, from: u32, to: u32) -> u8 {
        self.edges(from)
            .find(|&(t, _)| t == to)
            .map_or(0, |(_, k)| k)
    }

    /// The subgraph on `nodes` (numbered by their place in it), and its nodes' old numbers.
    fn subgraph(&self, nodes: &[u32]) -> (Graph, Vec<u32>) {
        let local: HashMap<u32, u32> = nodes
            .iter()
            .enumerate()
            .map(|(i, &n)| (n, i as u32))
            .collect();
        let mut edges = Vec::new();
        for (i, &n) in nodes.iter().enumerate() {
            for (t, kind) in self.edges(n) {
                if let Some(&j) = local.get(&t) {
                    edges.push((i as u32, j, kind));
                }
            }
        }
        (Graph::new(nodes.len(), edges), nodes.to_vec())
    }
}

/// The strongly connected components with more than one node, of the edges having a kind in
/// `mask` (iterative Tarjan).
fn tarjan(graph: &Graph, mask: u8) -> Vec<Vec<u32>> {
    const UNSEEN: u32 = u32::MAX;
    let n = graph.len();
    let mut index = vec![UNSEEN; n];
    let mut low = vec![0u32; n];
    let mut on_stack = vec![false; n];
    let mut stack: Vec<u32> = Vec::new();
    let mut calls: Vec<(u32, usize)> = Vec::new();
    let mut counter = 0u32;
    let mut components = Vec::new();
    for start in 0..n as u32 {
        if index[start as usize] != UNSEEN {
            continue;
        }
        index[start as usize] = counter;
        low[start as usize] = counter;
        counter += 1;
        stack.push(start);
        on_stack[start as usize] = true;
        calls.push((start, graph.offsets[start as usize]));
        while let Some(&mut (v, ref mut edge)) = calls.last_mut() {
            if *edge < graph.offsets[v as usize + 1] {
                let e = *edge;
                *edge += 1;
                if graph.kinds[e] & mask == 0 {
                    continue;
                }
                let w = graph.targets[e];
                if index[w as usize] == UNSEEN {
                    index[w as usize] = counter;
                    low[w as usize] = counter;
                    counter += 1;
                    stack.push(w);
                    on_stack[w as usize] = true;
                    calls.push((w, graph.offsets[w as usize]));
                } else if on_stack[w as usize] {
                    low[v as usize] = low[v as usize].min(index[w as usize]);
                }
                continue;
            }
            calls.pop();
            if let Some(&(u, _)) = calls.last() {
                low[u as usize] = low[u as usize].min(low[v as usize]);
            }
            if low[v as usize] == index[v as usize] {
                let mut component = Vec::new();
                loop {
                    let w = stack.pop().expect("v is on the stack");
                    on_stack[w as usize] = false;
                    component.push(w);
                    if w == v {
                        break;
                    }
                }
                if component.len() > 1 {
                    components.push(component);
                }
            }
        }
    }
    components
}

/// A short cycle in `component`, searched for with the least severe edges first.
fn cycle_in(graph: &Graph, component: &[u32]) -> Vec<(u32, u8)> {
    let (local, global) = graph.subgraph(component);
    let lift = |cycle: Vec<(u32, u8)>| -> Vec<(u32, u8)> {
        cycle
            .into_iter()
            .map(|(n, kind)| (global[n as usize], kind))
            .collect()
    };
    for realtime in [0, RT] {
        for mask in [WW, WW | WR] {
            if let Some(cycle) = shortest_cycle(&local, mask | realtime) {
                return lift(cycle);
            }
        }
        if let Some(cycle) = single_anti_dependency_cycle(&local, WW | WR | realtime) {
            return lift(cycle);
        }
        if let Some(cycle) = shortest_cycle(&local, WW | WR | RW | realtime) {
            return lift(cycle);
        }
    }
    unreachable!("a strongly connected component has a cycle")
}

/// The preferred kind to name an edge by, among `kinds`: the least severe.
fn label(kinds: u8) -> u8 {
    [WW, WR, RT, RW]
        .into_iter()
        .find(|k| kinds & k != 0)
        .expect("an edge has a kind")
}

/// Breadth-first: the shortest path from `from` to `to` over edges with a kind in `mask`, as its
/// nodes from `from` to the one with the edge into `to`. With `to == from`, a shortest cycle.
fn shortest_path(graph: &Graph, from: u32, to: u32, mask: u8) -> Option<Vec<u32>> {
    let mut parent: HashMap<u32, u32> = HashMap::new();
    let mut queue = VecDeque::from([from]);
    while let Some(v) = queue.pop_front() {
        for (w, kinds) in graph.edges(v) {
            if kinds & mask == 0 {
                continue;
            }
            if w == to {
                let mut path = vec![v];
                let mut at = v;
                while at != from {
                    at = parent[&at];
                    path.push(at);
                }
                path.reverse();
                return Some(path);
            }
            if w != from && !parent.contains_key(&w) {
                parent.insert(w, v);
                queue.push_back(w);
            }
        }
    }
    None
}

/// Start nodes tried when looking for a short cycle in a component.
const CYCLE_STARTS: usize = 8;
/// Anti-dependency edges tried when looking for a G-single cycle.
const SINGLE_RW_TRIES: usize = 256;

/// A shortest cycle (over a few start nodes) of edges with a kind in `mask`, each node with the
/// kind of its edge to the next.
fn shortest_cycle(graph: &Graph, mask: u8) -> Option<Vec<(u32, u8)>> {
    let components = tarjan(graph, mask);
    let component = components.iter().min_by_key(|c| c.len())?;
    let mut best: Option<Vec<u32>> = None;
    for &start in component.iter().take(CYCLE_STARTS) {
        if let Some(path) = shortest_path(graph, start, start, mask) {
            if best.as_ref().is_none_or(|b| path.len() < b.len()) {
                best = Some(path);
            }
        }
    }
    let cycle = best?;
    Some(label_cycle(graph, &cycle, mask))
}

fn label_cycle(graph: &Graph, cycle: &[u32], mask: u8) -> Vec<(u32, u8)> {
    cycle
        .iter()
        .enumerate()
        .map(|(i, &n)| {
            let next = cycle[(i + 1) % cycle.len()];
            (n, label(graph.kinds_between(n, next) & mask))
        })
        .collect()
}

/// A shortest cycle with exactly one anti-dependency (rw) edge, the others of a kind in `mask`.
fn single_anti_dependency_cycle(graph: &Graph, mask: u8) -> Option<Vec<(u32, u8)>> {
    let mut best: Option<Vec<(u32, u8)>> = None;
    let mut tries = 0;
    for a in 0..graph.len() as u32 {
        for (b, kinds) in graph.edges(a) {
            if kinds & RW == 0 {
                continue;
            }
            if tries == SINGLE_RW_TRIES || best.as_ref().is_some_and(|c| c.len() == 2) {
                return best;
            }
            tries += 1;
            // b ... a over `mask`, then a -rw-> b.
            let Some(mut nodes) = shortest_path(graph, b, a, mask) else {
                continue;
            };
            nodes.push(a);
            if best.as_ref().is_some_and(|c| c.len() <= nodes.len()) {
                continue;
            }
            let mut cycle: Vec<(u32, u8)> = nodes
                .windows(2)
                .map(|w| (w[0], label(graph.kinds_between(w[0], w[1]) & mask)))
                .collect();
            cycle.push((a, RW));
            best = Some(cycle);
        }
    }
    best
}
