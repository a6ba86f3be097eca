//! The Wing–Gong–Lowe linearizability search, with the memoisation Lowe and Porcupine add.
//!
//! The history is a doubly linked list of call and return entries in time order. The search
//! repeatedly picks a call that appears before the first remaining return (an operation that may
//! take effect now), applies it to the model and unlinks its entries; reaching a return entry means
//! the operation it belongs to can no longer be placed, so the last choice is undone. Every
//! (set of linearized operations, model state) pair is explored once: two paths that reach the same
//! pair have the same future.

use std::collections::HashMap;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

/// A sequential specification.
pub(super) trait Model {
    type State: Clone + Eq + Hash;
    type Op;

    fn init(&self) -> Self::State;

    /// The state after `op`, or `None` when `op` cannot happen in `state` (for example a read
    /// that returned something else).
    fn step(&self, state: &Self::State, op: &Self::Op) -> Option<Self::State>;
}

pub(super) struct SearchOp<O> {
    pub op: O,
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

/// Searches for a linearization of `ops`, which must be sorted by invoke time.
pub(super) fn search<M: Model>(
    model: &M,
    ops: &[SearchOp<M::Op>],
    deadline: Option<Instant>,
) -> Outcome {
    debug_assert!(ops.windows(2).all(|w| w[0].invoke <= w[1].invoke));
    let mut list = EntryList::new(ops);
    let zobrist: Vec<u64> = (0..ops.len() as u64).map(splitmix64).collect();
    let mut linearized = Bitset::new(ops.len());
    let mut set_hash = 0u64;
    let mut memo = Memo::default();
    let mut state = model.init();
    let mut stack: Vec<Frame<M::State>> = Vec::new();
    let mut required = ops.iter().filter(|op| op.complete.is_some()).count();
    let mut longest = Longest::default();

    let mut cursor = list.first();
    let mut iterations = 0u64;
    loop {
        if required == 0 {
            return Outcome::Valid;
        }
        if iterations.is_multiple_of(4096) && deadline.is_some_and(|d| Instant::now() >= d) {
            return Outcome::Unknown;
        }
        iterations += 1;
        match list.call_at(cursor) {
            Some(i) => {
                if let Some(next) = model.step(&state, &ops[i].op) {
                    let next_hash = set_hash ^ zobrist[i];
                    linearized.set(i);
                    if memo.insert(next_hash ^ state_hash(&next), &next, &linearized) {
                        stack.push(Frame {
                            op: i,
                            state: std::mem::replace(&mut state, next),
                        });
                        set_hash = next_hash;
                        list.lift(i);
                        if ops[i].complete.is_some() {
                            required -= 1;
                        }
                        longest.pushed(&stack);
                        cursor = list.first();
                        continue;
                    }
                    linearized.clear(i);
                }
                cursor = list.next(cursor);
            }
            None => {
                // A return (or the end of the list): the operations before it have all been
                // tried in this configuration, so undo the most recent choice.
                let Some(frame) = stack.pop() else {
                    return Outcome::Invalid {
                        longest: longest.ops,
                    };
                };
                longest.popped(stack.len());
                let i = frame.op;
                state = frame.state;
                linearized.clear(i);
                set_hash ^= zobrist[i];
                if ops[i].complete.is_some() {
                    required += 1;
                }
                list.unlift(i);
                cursor = list.next(list.call[i]);
            }
        }
    }
}

struct Frame<S> {
    op: usize,
    /// The state before `op`.
    state: S,
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
    fn pushed<S>(&mut self, stack: &[Frame<S>]) {
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

/// Calls and returns in time order, as a doubly linked list that entries can be unlinked from
/// and relinked into in last-out-first-in order (dancing links).
struct EntryList {
    next: Vec<usize>,
    prev: Vec<usize>,
    /// For each node: the operation whose call it is, or `None` for returns and the sentinels.
    node_call: Vec<Option<usize>>,
    call: Vec<usize>,
    ret: Vec<Option<usize>>,
}

const HEAD: usize = 0;

impl EntryList {
    fn new<O>(ops: &[SearchOp<O>]) -> Self {
        // At equal times calls sort before returns: operations that touch at an instant are
        // treated as concurrent, which never rejects a linearizable history.
        let mut entries: Vec<(u64, bool, usize)> = Vec::with_capacity(ops.len() * 2);
        for (i, op) in ops.iter().enumerate() {
            entries.push((op.invoke, false, i));
            if let Some(t) = op.complete {
                entries.push((t, true, i));
            }
        }
        entries.sort_unstable();
        let tail = entries.len() + 1;
        let mut list = EntryList {
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|n| n.saturating_sub(1)).collect(),
            node_call: vec![None; tail + 1],
            call: vec![0; ops.len()],
            ret: vec![None; ops.len()],
        };
        for (n, &(_, is_return, i)) in entries.iter().enumerate() {
            let node = n + 1;
            if is_return {
                list.ret[i] = Some(node);
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
        if let Some(r) = self.ret[op] {
            self.unlink(r);
        }
    }

    fn unlift(&mut self, op: usize) {
        if let Some(r) = self.ret[op] {
            self.relink(r);
        }
        self.relink(self.call[op]);
    }
}

/// The set of linearized operations. Operations are numbered in invoke order, so the set is
/// usually all ones up to some point and sparse after it; the memo stores only what follows the
/// full words.
struct Bitset {
    words: Vec<u64>,
    full: usize,
}

impl Bitset {
    fn new(len: usize) -> Self {
        Bitset {
            words: vec![0; len.div_ceil(64)],
            full: 0,
        }
    }

    fn set(&mut self, i: usize) {
        self.words[i / 64] |= 1 << (i % 64);
        while self.words.get(self.full) == Some(&u64::MAX) {
            self.full += 1;
        }
    }

    fn clear(&mut self, i: usize) {
        self.words[i / 64] &= !(1 << (i % 64));
        self.full = self.full.min(i / 64);
    }

    /// A canonical form: the number of leading full words and the words after them, without
    /// trailing zero words.
    fn window(&self) -> (usize, &[u64]) {
        let mut end = self.words.len();
        while end > self.full && self.words[end - 1] == 0 {
            end -= 1;
        }
        (self.full, &self.words[self.full..end])
    }
}

/// The configurations already explored. Windows live in one arena, and configurations with equal
/// hashes are chained, so a lookup allocates nothing.
struct Memo<S> {
    arena: Vec<u64>,
    configs: Vec<Config<S>>,
    newest: HashMap<u64, usize>,
}

impl<S> Default for Memo<S> {
    fn default() -> Self {
        Memo {
            arena: Vec::new(),
            configs: Vec::new(),
            newest: HashMap::new(),
        }
    }
}

struct Config<S> {
    state: S,
    full: usize,
    offset: usize,
    len: usize,
    older: Option<usize>,
}

impl<S: Clone + Eq> Memo<S> {
    /// Adds the configuration; `false` if it was already there.
    fn insert(&mut self, hash: u64, state: &S, set: &Bitset) -> bool {
        let (full, window) = set.window();
        let newest = self.newest.get(&hash).copied();
        let mut candidate = newest;
        while let Some(c) = candidate {
            let config = &self.configs[c];
            if config.full == full
                && config.state == *state
                && self.arena[config.offset..config.offset + config.len] == *window
            {
                return false;
            }
            candidate = config.older;
        }
        self.newest.insert(hash, self.configs.len());
        self.configs.push(Config {
            state: state.clone(),
            full,
            offset: self.arena.len(),
            len: window.len(),
            older: newest,
        });
        self.arena.extend_from_slice(window);
        true
    }
}

fn state_hash<S: Hash>(state: &S) -> u64 {
    let mut hasher = DefaultHasher::new();
    state.hash(&mut hasher);
    hasher.finish()
}

/// Per-operation hash keys (Zobrist hashing): the hash of a set is the XOR of its members' keys,
/// updated in O(1) as operations are linearized and undone.
fn splitmix64(i: u64) -> u64 {
    let mut z = i.wrapping_add(1).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}
