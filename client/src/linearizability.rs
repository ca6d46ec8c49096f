//! A linearizability checker of client histories: the Wing–Gong search with
//! Lowe's memoization, as Porcupine runs it.
//!
//! ```text
//!  history ──partition (by key)──> per partition: events sorted by time
//!     search: take the first call whose operation the model accepts from the
//!             current state and that was not tried with the same (linearized
//!             set, state) before; at a return whose operation is not placed, undo
//!     all placed: linearizable; nothing left to undo: a violation; out of time: unknown
//! ```
//!
//! An operation whose outcome is unknown (a timeout, a lost connection) has
//! no return: it may take effect at any point after its call, or never, and
//! any output is accepted for it (the model is asked with `None`). A
//! violation is explained: the partition, the longest sequence of
//! operations that could be placed, and the operations that could not
//! follow it.

use std::collections::HashSet;
use std::fmt::Debug;
use std::hash::Hash;
use std::time::{Duration, Instant};

/// A sequential specification, as the checker asks it.
pub trait Model {
    /// A state of the specification.
    type State: Clone + Eq + Hash + Debug;
    /// An operation's input.
    type Input: Clone + Debug;
    /// An operation's output.
    type Output: Clone + Debug;
    /// The state before any operation.
    fn init(&self) -> Self::State;
    /// The state after `input` if, from `state`, it may answer `output`
    /// (`None`: the output is unknown, any is accepted); `None` if not.
    fn step(
        &self,
        state: &Self::State,
        input: &Self::Input,
        output: Option<&Self::Output>,
    ) -> Option<Self::State>;
    /// The partition of an operation: operations of different partitions
    /// never affect each other (a key-value store's key), and each
    /// partition is checked alone. Default: one partition.
    fn partition(&self, _input: &Self::Input) -> u64 {
        0
    }
}

/// One call of a history.
#[derive(Clone, Debug, PartialEq)]
pub struct Operation<I, O> {
    /// Who called (for explanations).
    pub client: u64,
    /// What was asked.
    pub input: I,
    /// When it was invoked (any monotonic unit, e.g. nanoseconds).
    pub call: u64,
    /// When it completed and what it returned; `None`: the outcome is
    /// unknown (it may or may not have taken effect).
    pub result: Option<(u64, O)>,
}

/// What the checker concluded.
#[derive(Clone, Debug, PartialEq)]
pub enum Verdict<I, O> {
    /// Every partition has a linearization.
    Linearizable,
    /// A partition has none.
    Violation(Explanation<I, O>),
    /// The time budget ran out before every partition was decided (none was
    /// found to be a violation).
    Unknown {
        /// Partitions not decided.
        undecided: Vec<u64>,
    },
}

/// Why a partition is not linearizable.
#[derive(Clone, Debug, PartialEq)]
pub struct Explanation<I, O> {
    /// The partition (a key).
    pub partition: u64,
    /// The longest sequence of its operations that could be linearized, in order.
    pub longest: Vec<Operation<I, O>>,
    /// The operations that had to come next (invoked before any remaining
    /// operation returned), none of which the model accepts after `longest`.
    pub stuck: Vec<Operation<I, O>>,
}

/// Checks `history` against `model`, spending at most `budget`.
pub fn check<M: Model>(
    model: &M,
    history: &[Operation<M::Input, M::Output>],
    budget: Duration,
) -> Verdict<M::Input, M::Output> {
    let deadline = Instant::now() + budget;
    let mut partitions: Vec<(u64, Vec<usize>)> = Vec::new();
    for (i, op) in history.iter().enumerate() {
        let p = model.partition(&op.input);
        match partitions.iter_mut().find(|(q, _)| *q == p) {
            Some((_, ops)) => ops.push(i),
            None => partitions.push((p, vec![i])),
        }
    }
    let mut undecided = Vec::new();
    for (partition, indices) in partitions {
        let ops: Vec<&Operation<M::Input, M::Output>> =
            indices.iter().map(|&i| &history[i]).collect();
        match Search::new(model, &ops).run(deadline) {
            Outcome::Linearizable => {}
            Outcome::Unknown => undecided.push(partition),
            Outcome::Violation(longest) => {
                return Verdict::Violation(explain(partition, &ops, &longest));
            }
        }
    }
    match undecided.is_empty() {
        true => Verdict::Linearizable,
        false => Verdict::Unknown { undecided },
    }
}

enum Outcome {
    Linearizable,
    /// The longest linearized sequence found (indices into the partition's operations).
    Violation(Vec<usize>),
    Unknown,
}

/// One partition's search over a doubly linked list of call and return
/// events (index `2i` is operation `i`'s call, `2i + 1` its return).
struct Search<'a, M: Model> {
    model: &'a M,
    ops: &'a [&'a Operation<M::Input, M::Output>],
    next: Vec<usize>,
    prev: Vec<usize>,
    /// The list's sentinel (head and tail).
    head: usize,
}

impl<'a, M: Model> Search<'a, M> {
    fn new(model: &'a M, ops: &'a [&'a Operation<M::Input, M::Output>]) -> Self {
        let mut events: Vec<(u64, bool, usize)> = Vec::with_capacity(2 * ops.len());
        for (i, op) in ops.iter().enumerate() {
            events.push((op.call, false, 2 * i));
            // An unknown outcome never returns: it can always go last.
            events.push((
                op.result.as_ref().map_or(u64::MAX, |r| r.0),
                true,
                2 * i + 1,
            ));
        }
        // Calls before returns at the same instant: such operations overlap.
        events.sort_by_key(|&(t, is_return, id)| (t, is_return, id));
        let head = 2 * ops.len();
        let (mut next, mut prev) = (vec![head; head + 1], vec![head; head + 1]);
        let mut last = head;
        for &(_, _, id) in &events {
            next[last] = id;
            prev[id] = last;
            last = id;
        }
        next[last] = head;
        prev[head] = last;
        Search {
            model,
            ops,
            next,
            prev,
            head,
        }
    }

    /// Takes operation `op`'s call and return out of the list.
    fn lift(&mut self, op: usize) {
        for id in [2 * op, 2 * op + 1] {
            let (p, n) = (self.prev[id], self.next[id]);
            self.next[p] = n;
            self.prev[n] = p;
        }
    }

    /// Puts them back (in the reverse order of [`Search::lift`]).
    fn unlift(&mut self, op: usize) {
        for id in [2 * op + 1, 2 * op] {
            let (p, n) = (self.prev[id], self.next[id]);
            self.next[p] = id;
            self.prev[n] = id;
        }
    }

    fn run(mut self, deadline: Instant) -> Outcome {
        let words = self.ops.len().div_ceil(64);
        let mut placed = vec![0u64; words];
        let mut seen: HashSet<(Vec<u64>, M::State)> = HashSet::new();
        let mut state = self.model.init();
        let mut stack: Vec<(usize, M::State)> = Vec::new();
        let mut longest: Vec<usize> = Vec::new();
        let mut at = self.next[self.head];
        let mut steps = 0u64;
        while self.next[self.head] != self.head {
            steps += 1;
            if steps.is_multiple_of(4096) && Instant::now() >= deadline {
                return Outcome::Unknown;
            }
            if at != self.head && at.is_multiple_of(2) {
                let op = at / 2;
                let output = self.ops[op].result.as_ref().map(|r| &r.1);
                if let Some(after) = self.model.step(&state, &self.ops[op].input, output) {
                    placed[op / 64] |= 1 << (op % 64);
                    if seen.insert((placed.clone(), after.clone())) {
                        stack.push((op, std::mem::replace(&mut state, after)));
                        if stack.len() > longest.len() {
                            longest = stack.iter().map(|(op, _)| *op).collect();
                        }
                        self.lift(op);
                        at = self.next[self.head];
                        continue;
                    }
                    placed[op / 64] &= !(1 << (op % 64));
                }
                at = self.next[at];
                continue;
            }
            // A return whose operation is not placed (or the end): undo the last step.
            let Some((op, before)) = stack.pop() else {
                return Outcome::Violation(longest);
            };
            placed[op / 64] &= !(1 << (op % 64));
            state = before;
            self.unlift(op);
            at = self.next[2 * op];
        }
        Outcome::Linearizable
    }
}

/// The explanation of a violation: the longest sequence, and what could not follow it.
fn explain<I: Clone, O: Clone>(
    partition: u64,
    ops: &[&Operation<I, O>],
    longest: &[usize],
) -> Explanation<I, O> {
    let done: HashSet<usize> = longest.iter().copied().collect();
    let first_return = (0..ops.len())
        .filter(|i| !done.contains(i))
        .map(|i| ops[i].result.as_ref().map_or(u64::MAX, |r| r.0))
        .min()
        .unwrap_or(u64::MAX);
    let stuck = (0..ops.len())
        .filter(|i| !done.contains(i) && ops[*i].call <= first_return)
        .map(|i| ops[i].clone())
        .collect();
    Explanation {
        partition,
        longest: longest.iter().map(|&i| ops[i].clone()).collect(),
        stuck,
    }
}

/// A key-value store whose every operation answers the value the key had
/// before it (what the B+-tree service's client calls answer): the model
/// for histories of `get`, `put`, `insert` and `delete`, partitioned by key.
#[derive(Clone, Copy, Debug, Default)]
pub struct KeyValue;

/// An operation of [`KeyValue`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KvOp {
    /// Reads a key.
    Get(u64),
    /// Sets a key that exists (nothing if it does not).
    Put(u64, u64),
    /// Sets a key, whether it exists or not.
    Insert(u64, u64),
    /// Removes a key.
    Delete(u64),
}

impl KvOp {
    /// The key.
    pub fn key(self) -> u64 {
        match self {
            KvOp::Get(k) | KvOp::Put(k, _) | KvOp::Insert(k, _) | KvOp::Delete(k) => k,
        }
    }

    /// From the key's `value`: its value after, and the answer.
    pub fn apply(self, value: Option<u64>) -> (Option<u64>, Option<u64>) {
        match self {
            KvOp::Get(_) => (value, value),
            KvOp::Put(_, v) => (value.map(|_| v), value),
            KvOp::Insert(_, v) => (Some(v), value),
            KvOp::Delete(_) => (None, value),
        }
    }
}

impl Model for KeyValue {
    type State = Option<u64>;
    type Input = KvOp;
    type Output = Option<u64>;

    fn init(&self) -> Option<u64> {
        None
    }

    fn step(
        &self,
        state: &Option<u64>,
        op: &KvOp,
        output: Option<&Option<u64>>,
    ) -> Option<Option<u64>> {
        let (after, answer) = op.apply(*state);
        match output {
            Some(out) if *out != answer => None,
            _ => Some(after),
        }
    }

    fn partition(&self, op: &KvOp) -> u64 {
        op.key()
    }
}
