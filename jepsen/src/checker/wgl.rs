//! The Wing–Gong–Lowe linearizability search for a register, with the memoisation Lowe and
//! Porcupine add, and three reductions of the search that keep it exact.
//!
//! The operations that must be linearized (those that completed) are a doubly linked list of call
//! and return entries in time order. The search repeatedly picks a call that appears before the
//! first remaining return (an operation that may take effect now), applies it and unlinks its
//! entries; when every such choice fails, it undoes the last one. Every (set of linearized
//! operations, register value) pair is explored once: paths that reach the same pair have the
//! same future.
//!
//! The reductions, each of which only drops choices that cannot lead to a linearization that
//! another choice does not also lead to:
//!
//! - A read that can take effect now is taken without trying alternatives: moving a read to the
//!   front of any linearization from here keeps it valid, since a read changes nothing.
//! - An operation with an unknown outcome (no return: it may take effect any time after its
//!   invoke, or never) is only tried right before an operation that observes its effect: one
//!   whose precondition it establishes. Followed by a write or by nothing, its effect would be
//!   lost and it could be left out; so after one, the next operation must not be a write.
//! - Equal unknown-outcome operations (say, two timed-out writes of 3) can swap places in any
//!   linearization, so only the earliest-invoked unlinearized one of them is ever tried.

use std::collections::HashMap;
use std::time::Instant;

/// A register operation, by what it needs and what it does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) enum RegisterOp {
    /// The value read; `None` when the key was absent.
    Read(Option<i64>),
    Write(i64),
    /// Expected value (`None`: the key is absent) and new value.
    Cas(Option<i64>, i64),
}

impl RegisterOp {
    /// The only value the register may hold for the operation to succeed.
    fn requires(self) -> Option<Option<i64>> {
        match self {
            RegisterOp::Read(v) | RegisterOp::Cas(v, _) => Some(v),
            RegisterOp::Write(_) => None,
        }
    }

    /// The value the operation leaves, if it changes it.
    fn sets(self) -> Option<i64> {
        match self {
            RegisterOp::Read(_) => None,
            RegisterOp::Write(v) | RegisterOp::Cas(_, v) => Some(v),
        }
    }

    /// The register after the operation, or `None` when it cannot happen on `state`.
    pub(super) fn step(self, state: Option<i64>) -> Option<Option<i64>> {
        match self.requires() {
            Some(required) if required != state => None,
            _ => Some(self.sets().or(state)),
        }
    }

    fn is_write(self) -> bool {
        matches!(self, RegisterOp::Write(_))
    }

    /// Whether the operation never changes the register.
    fn is_read(self) -> bool {
        self.sets().is_none() || self.sets().map(Some) == self.requires()
    }
}

pub(super) struct SearchOp {
    pub op: RegisterOp,
    pub invoke: u64,
    /// `None` for an operation with an unknown outcome: it may take effect at any time after its
    /// invoke, or never, so it is never required to be linearized.
    pub complete: Option<u64>,
}

pub(super) enum Outcome {
    Valid,
    /// The longest sequence of operations (indices into the search's input) that could be
    /// linearized, in linearization order.
    Invalid {
        longest: Vec<usize>,
    },
    /// The deadline passed first.
    Unknown,
}

/// Searches for a linearization of `ops`, which must be sorted by invoke time, starting from an
/// absent key.
pub(super) fn search(ops: &[SearchOp], deadline: Option<Instant>) -> Outcome {
    debug_assert!(ops.windows(2).all(|w| w[0].invoke <= w[1].invoke));
    let mut list = EntryList::new(ops);
    let mut groups = Groups::new(ops);
    let zobrist: Vec<u64> = (0..ops.len() as u64).map(splitmix64).collect();
    let mut linearized = Bitset::new(ops.len());
    let mut set_hash = 0u64;
    let mut memo = Memo::default();
    let mut state: Option<i64> = None;
    let mut stack: Vec<Frame> = Vec::new();
    let mut required = ops.iter().filter(|op| op.complete.is_some()).count();
    let mut longest = Longest::default();
    // For each depth, the unknown-outcome operations worth trying in that configuration.
    let mut demanded: Vec<Vec<usize>> = vec![Vec::new()];

    let mut cursor = Cursor::Start;
    let mut bound = list.first_return_time();
    let mut iterations = 0u64;
    loop {
        if required == 0 {
            return Outcome::Valid;
        }
        if iterations.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() >= d) {
            return Outcome::Unknown;
        }
        iterations += 1;
        let i = match cursor {
            Cursor::Start => {
                let read = list
                    .calls()
                    .find(|&i| ops[i].op.is_read() && ops[i].op.step(state).is_some());
                match read {
                    Some(i) => i,
                    None => {
                        let depth = stack.len();
                        groups.demanded(ops, &list, state, bound, &mut demanded[depth]);
                        cursor = Cursor::Demand(0);
                        continue;
                    }
                }
            }
            Cursor::Demand(k) => match demanded[stack.len()].get(k) {
                Some(&i) => i,
                None => {
                    cursor = Cursor::Entry(list.first());
                    continue;
                }
            },
            Cursor::Entry(node) => match list.call_at(node) {
                Some(i) => i,
                // The first return: nothing after it can go before it.
                None => {
                    cursor = Cursor::Exhausted;
                    continue;
                }
            },
            Cursor::Exhausted => {
                // No linearization from this configuration: undo the last choice.
                let Some(frame) = stack.pop() else {
                    return Outcome::Invalid {
                        longest: longest.ops,
                    };
                };
                longest.popped(stack.len());
                let i = frame.op;
                state = frame.state;
                bound = frame.bound;
                linearized.clear(groups.bit[i]);
                set_hash ^= zobrist[i];
                match groups.of[i] {
                    Some(g) => groups.done[g] -= 1,
                    None => {
                        list.unlift(i);
                        required += 1;
                    }
                }
                cursor = match frame.from {
                    // The read was taken without trying alternatives, so they fail as well.
                    Cursor::Start => Cursor::Exhausted,
                    Cursor::Demand(k) => Cursor::Demand(k + 1),
                    Cursor::Entry(_) => Cursor::Entry(list.next(list.call[i])),
                    Cursor::Exhausted => unreachable!("nothing is taken when exhausted"),
                };
                continue;
            }
        };
        let after_unknown = stack.last().is_some_and(|f| groups.of[f.op].is_some());
        let next = match ops[i].op {
            op if after_unknown && op.is_write() => None,
            op => op.step(state),
        };
        if let Some(next) = next {
            let unknown = groups.of[i].is_some();
            let next_hash = set_hash ^ zobrist[i];
            linearized.set(groups.bit[i]);
            let hash = next_hash ^ state_hash(next) ^ u64::from(unknown);
            if memo.insert(hash, next, unknown, &linearized) {
                stack.push(Frame {
                    op: i,
                    state,
                    bound,
                    from: cursor,
                });
                state = next;
                set_hash = next_hash;
                match groups.of[i] {
                    Some(g) => groups.done[g] += 1,
                    None => {
                        list.lift(i);
                        required -= 1;
                        bound = list.first_return_time();
                    }
                }
                if demanded.len() == stack.len() {
                    demanded.push(Vec::new());
                }
                longest.pushed(&stack);
                cursor = Cursor::Start;
                continue;
            }
            linearized.clear(groups.bit[i]);
        }
        cursor = match cursor {
            // Explored already, and it failed; so does this configuration.
            Cursor::Start => Cursor::Exhausted,
            Cursor::Demand(k) => Cursor::Demand(k + 1),
            Cursor::Entry(node) => Cursor::Entry(list.next(node)),
            Cursor::Exhausted => unreachable!("nothing is taken when exhausted"),
        };
    }
}

/// Where the search is in trying the candidates of the current configuration, in this order.
///
/// Unknown-outcome operations come before the calls in the list: they are only tried when
/// something needs them, and trying them last would first explore everything else.
#[derive(Clone, Copy)]
enum Cursor {
    /// Looking for a read that can take effect now.
    Start,
    /// The unknown-outcome operations something needs, in [`Groups::demanded`]'s order.
    Demand(usize),
    /// The calls in the list up to the first return.
    Entry(usize),
    /// Every candidate has been tried.
    Exhausted,
}

struct Frame {
    op: usize,
    /// The register before `op`.
    state: Option<i64>,
    /// The time of the first remaining return before `op` was chosen: operations invoked after
    /// it cannot take effect before it.
    bound: u64,
    /// Where `op` was found.
    from: Cursor,
}

/// The deepest stack seen. Copying the whole stack at every new maximum would be quadratic in a
/// search that mostly goes forward, so only the part that differs from the previous best is.
#[derive(Default)]
struct Longest {
    ops: Vec<usize>,
    /// How many bottom frames of the stack are still equal to the start of `ops`.
    shared: usize,
}

impl Longest {
    fn pushed(&mut self, stack: &[Frame]) {
        if stack.len() > self.ops.len() {
            self.ops.truncate(self.shared);
            self.ops.extend(stack[self.shared..].iter().map(|f| f.op));
            self.shared = stack.len();
        }
    }

    fn popped(&mut self, depth: usize) {
        self.shared = self.shared.min(depth);
    }
}

/// The calls and returns of the operations that must be linearized, in time order, as a doubly
/// linked list that entries can be unlinked from and relinked into in last-out-first-in order
/// (dancing links).
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation whose call it is, or `None` for returns and the sentinels.
    node_call: Vec<Option<usize>>,
    node_time: Vec<u64>,
    /// Nodes by operation; unused for operations with an unknown outcome.
    call: Vec<usize>,
    ret: Vec<usize>,
}

const HEAD: usize = 0;

impl EntryList {
    fn new(ops: &[SearchOp]) -> Self {
        // At equal times calls sort before returns: operations that touch at an instant are
        // treated as concurrent, which never rejects a linearizable history.
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            if let Some(t) = op.complete {
                entries.push((op.invoke, false, i));
                entries.push((t, true, i));
            }
        }
        entries.sort_unstable();
        let tail = entries.len() + 1;
        let mut list = EntryList {
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|n| n.saturating_sub(1)).collect(),
            node_call: vec![None; tail + 1],
            node_time: vec![u64::MAX; tail + 1],
            call: vec![0; ops.len()],
            ret: vec![0; ops.len()],
        };
        for (n, &(time, is_return, i)) in entries.iter().enumerate() {
            let node = n + 1;
            list.node_time[node] = time;
            if is_return {
                list.ret[i] = node;
            } else {
                list.call[i] = node;
                list.node_call[node] = Some(i);
            }
        }
        list
    }

    fn first(&self) -> usize {
        self.next[HEAD]
    }

    fn next(&self, node: usize) -> usize {
        self.next[node]
    }

    fn call_at(&self, node: usize) -> Option<usize> {
        self.node_call[node]
    }

    /// The operations whose calls come before the first return.
    fn calls(&self) -> impl Iterator<Item = usize> + '_ {
        let mut node = self.first();
        std::iter::from_fn(move || {
            let call = self.node_call[node]?;
            node = self.next[node];
            Some(call)
        })
    }

    fn first_return_time(&self) -> u64 {
        let mut node = self.first();
        while self.node_call[node].is_some() {
            node = self.next[node];
        }
        self.node_time[node]
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    fn lift(&mut self, op: usize) {
        self.unlink(self.call[op]);
        self.unlink(self.ret[op]);
    }

    fn unlift(&mut self, op: usize) {
        self.relink(self.ret[op]);
        self.relink(self.call[op]);
    }
}

/// The operations with an unknown outcome, grouped by equality, and where every operation's bit
/// goes in the set of linearized operations.
///
/// Only the earliest-invoked unlinearized member of a group is a candidate, so the linearized
/// members of a group are always its first ones. Operations that must be linearized take the
/// first bits in invoke order, then come the groups one after another, so that a set of
/// linearized operations is a few runs of ones and zeros.
struct Groups {
    members: Vec<Vec<usize>>,
    /// How many of each group's members are linearized.
    done: Vec<usize>,
    /// Each operation's group; `None` for the operations that must be linearized.
    of: Vec<Option<usize>>,
    bit: Vec<usize>,
    /// The groups that set each value.
    setting: HashMap<i64, Vec<usize>>,
}

impl Groups {
    fn new(ops: &[SearchOp]) -> Self {
        let mut index: HashMap<RegisterOp, usize> = HashMap::new();
        let mut members: Vec<Vec<usize>> = Vec::new();
        let mut setting: HashMap<i64, Vec<usize>> = HashMap::new();
        let mut of = vec![None; ops.len()];
        let mut bit = vec![0; ops.len()];
        let mut next_bit = 0;
        for (i, op) in ops.iter().enumerate() {
            if op.complete.is_some() {
                bit[i] = next_bit;
                next_bit += 1;
                continue;
            }
            let g = *index.entry(op.op).or_insert_with(|| {
                members.push(Vec::new());
                if let Some(v) = op.op.sets() {
                    setting.entry(v).or_default().push(members.len() - 1);
                }
                members.len() - 1
            });
            members[g].push(i);
            of[i] = Some(g);
        }
        for &i in members.iter().flatten() {
            bit[i] = next_bit;
            next_bit += 1;
        }
        Groups {
            done: vec![0; members.len()],
            members,
            of,
            bit,
            setting,
        }
    }

    fn head(&self, g: usize) -> Option<usize> {
        self.members[g].get(self.done[g]).copied()
    }

    /// The unknown-outcome operations that could take effect now and set a value that a call in
    /// the list needs, directly or through a chain of unknown-outcome cas operations.
    fn demanded(
        &self,
        ops: &[SearchOp],
        list: &EntryList,
        state: Option<i64>,
        bound: u64,
        out: &mut Vec<usize>,
    ) {
        out.clear();
        let mut wanted: Vec<i64> = Vec::new();
        let want = |wanted: &mut Vec<i64>, op: RegisterOp| {
            if let Some(Some(v)) = op.requires().filter(|&r| r != state) {
                if !wanted.contains(&v) {
                    wanted.push(v);
                }
            }
        };
        for i in list.calls() {
            want(&mut wanted, ops[i].op);
        }
        let mut k = 0;
        while let Some(&v) = wanted.get(k) {
            k += 1;
            for &g in self.setting.get(&v).into_iter().flatten() {
                let Some(h) = self.head(g).filter(|&h| ops[h].invoke <= bound) else {
                    continue;
                };
                if ops[h].op.step(state).is_some() {
                    out.push(h);
                } else {
                    want(&mut wanted, ops[h].op);
                }
            }
        }
    }
}

/// The set of linearized operations, by [`Groups::bit`].
struct Bitset {
    words: Vec<u64>,
}

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset {
            words: vec![0; len.div_ceil(64)],
        }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
    }

    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
    }

    /// A compact canonical form: the positions where a bit differs from the one before it
    /// (the bit before the first is taken as zero).
    fn runs(&self, out: &mut Vec<u32>) {
        out.clear();
        let mut previous = 0u64;
        for (w, &word) in self.words.iter().enumerate() {
            if word == previous.wrapping_neg() {
                continue;
            }
            // Bit k of `flips` is set where bit k of the word differs from the bit before it.
            let mut flips = word ^ ((word << 1) | previous);
            while flips != 0 {
                out.push((w * 64) as u32 + flips.trailing_zeros());
                flips &= flips - 1;
            }
            previous = word >> 63;
        }
    }
}

/// The configurations already explored. Run positions live in one arena, and configurations with
/// equal hashes are chained, so a lookup allocates nothing.
#[derive(Default)]
struct Memo {
    arena: Vec<u32>,
    configs: Vec<Config>,
    newest: HashMap<u64, usize>,
    scratch: Vec<u32>,
}

struct Config {
    state: Option<i64>,
    /// Whether the last operation linearized had an unknown outcome, which restricts what may
    /// come next.
    after_unknown: bool,
    offset: usize,
    len: usize,
    older: Option<usize>,
}

impl Memo {
    /// Adds the configuration; `false` if it was already there.
    fn insert(&mut self, hash: u64, state: Option<i64>, after_unknown: bool, set: &Bitset) -> bool {
        set.runs(&mut self.scratch);
        let newest = self.newest.get(&hash).copied();
        let mut candidate = newest;
        while let Some(c) = candidate {
            let config = &self.configs[c];
            if config.state == state
                && config.after_unknown == after_unknown
                && self.arena[config.offset..config.offset + config.len] == *self.scratch
            {
                return false;
            }
            candidate = config.older;
        }
        self.newest.insert(hash, self.configs.len());
        self.configs.push(Config {
            state,
            after_unknown,
            offset: self.arena.len(),
            len: self.scratch.len(),
            older: newest,
        });
        self.arena.extend_from_slice(&self.scratch);
        true
    }
}

fn state_hash(state: Option<i64>) -> u64 {
    state.map_or(0x5bd1_e995, |v| {
        splitmix64(v as u64 ^ 0xd6e8_feb8_6659_fd93)
    })
}

/// Per-operation hash keys (Zobrist hashing): the hash of a set is the XOR of its members' keys,
/// updated in O(1) as operations are linearized and undone.
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
