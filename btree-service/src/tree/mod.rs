//! A B+-tree of `u64` keys and `u64` values, in flat arrays.
//!
//! ```text
//! inner node i:  keys  inner_keys[i*F .. i*F+len]        separators
//!                kids  inner_children[i*(F+1) ..]        len+1 children
//! leaf j:        block of cache lines: len | keys[F] (sorted) | vals[F]
//!                fences [leaf_lo[j], leaf_hi[j]]         every key routed to j
//!                next  leaf_next[j]                      the leaf to the right
//! ```
//!
//! All leaves are at depth `height`. A leaf's fences are exactly the key
//! range its ancestors' separators route to it; they change only with the
//! tree's shape.
//!
//! The concurrency contract (docs/ARCHITECTURE.md, "The B+-tree service") is in the types:
//! - `&mut BTree` (`exclusive`): anything, including splits and merges;
//! - `&BTree` plus a thread's partition (`shared`): a thread may read and
//!   update values of its own keys anywhere, and insert or delete only in a
//!   leaf whose fences lie inside its partition and only without a split or
//!   merge. Anything else is reported as a [`ContractViolation`] naming the
//!   leaf and the threads; nothing is changed then.
//!
//! Leaf contents are atomics so that several threads can work in disjoint
//! leaves through `&BTree` without `unsafe`; relaxed loads and stores compile
//! to plain moves. Each leaf's block starts on its own cache line, so two
//! threads working in different leaves never write to one line (false
//! sharing cost opt-PSMR a third of its parallel throughput before).
//! Happens-before between parallel and exclusive phases comes from the
//! engine's lock.

mod bulk;
mod exclusive;
mod image;
mod shared;

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

pub use bulk::SnapshotError;
pub use image::TreeImage;
pub use shared::{ContractViolation, ViolationKind};

/// Smallest fanout: every node can split into two legal nodes.
pub const MIN_FANOUT: usize = 4;

/// Deepest tree: with fanout 4, 3^40 leaves exceed the key space.
const MAX_HEIGHT: usize = 40;

pub(crate) const NIL: u32 = u32::MAX;

const WORDS_PER_LINE: usize = 8;

/// One cache line of leaf words.
#[derive(Debug, Default)]
#[repr(align(64))]
struct Line([AtomicU64; WORDS_PER_LINE]);

/// A B+-tree map from `u64` to `u64`.
#[derive(Debug)]
pub struct BTree {
    fanout: usize,
    min: usize,
    height: u32,
    root: u32,
    inner_keys: Vec<u64>,
    inner_children: Vec<u32>,
    inner_len: Vec<u32>,
    inner_free: Vec<u32>,
    /// Leaf blocks: `stride` words each, starting on cache-line boundaries.
    leaf_words: Vec<Line>,
    stride: usize,
    leaf_count: usize,
    leaf_next: Vec<u32>,
    leaf_lo: Vec<u64>,
    leaf_hi: Vec<u64>,
    leaf_free: Vec<u32>,
}

/// The path from the root to a leaf: per inner level, the node and the
/// index of the child taken.
pub(crate) struct Path {
    steps: [(u32, u32); MAX_HEIGHT],
    len: usize,
}

impl BTree {
    /// An empty tree whose nodes hold up to `fanout` keys (at least 4).
    pub fn new(fanout: usize) -> BTree {
        let fanout = fanout.max(MIN_FANOUT);
        let mut tree = BTree {
            fanout,
            min: fanout / 2,
            height: 0,
            root: 0,
            inner_keys: Vec::new(),
            inner_children: Vec::new(),
            inner_len: Vec::new(),
            inner_free: Vec::new(),
            leaf_words: Vec::new(),
            stride: (1 + 2 * fanout).div_ceil(WORDS_PER_LINE) * WORDS_PER_LINE,
            leaf_count: 0,
            leaf_next: Vec::new(),
            leaf_lo: Vec::new(),
            leaf_hi: Vec::new(),
            leaf_free: Vec::new(),
        };
        tree.root = tree.alloc_leaf(0, u64::MAX, NIL);
        tree
    }

    /// Keys per node.
    pub fn fanout(&self) -> usize {
        self.fanout
    }

    /// Depth of the leaves (0: the root is a leaf).
    pub fn height(&self) -> u32 {
        self.height
    }

    /// Number of entries (walks the leaves).
    pub fn len(&self) -> usize {
        self.leaves().map(|l| self.leaf_len(l)).sum()
    }

    /// Whether the tree has no entry.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Entries the leaves allocated so far have room for (leaves are reused,
    /// never released, so no earlier moment held more entries).
    pub fn capacity(&self) -> usize {
        self.leaf_count * self.fanout
    }

    /// The value of `key`.
    pub fn get(&self, key: u64) -> Option<u64> {
        let leaf = self.leaf_of(key);
        self.search(leaf, key).ok().map(|i| self.val(leaf, i))
    }

    /// Every entry in key order.
    pub fn iter(&self) -> impl Iterator<Item = (u64, u64)> + '_ {
        self.leaves()
            .flat_map(move |l| (0..self.leaf_len(l)).map(move |i| (self.key(l, i), self.val(l, i))))
    }

    /// A digest of the entries that depends neither on the tree's shape nor
    /// on the order operations ran in.
    pub fn digest(&self) -> u64 {
        self.iter()
            .fold(0u64, |acc, (k, v)| acc.wrapping_add(mix(k ^ mix(v))))
    }

    // ---- layout helpers -------------------------------------------------

    fn word(&self, at: usize) -> &AtomicU64 {
        &self.leaf_words[at / WORDS_PER_LINE].0[at % WORDS_PER_LINE]
    }

    fn key_at(&self, leaf: u32, i: usize) -> usize {
        debug_assert!(i < self.fanout);
        leaf as usize * self.stride + 1 + i
    }

    fn val_at(&self, leaf: u32, i: usize) -> usize {
        self.key_at(leaf, i) + self.fanout
    }

    pub(crate) fn leaf_len(&self, leaf: u32) -> usize {
        self.word(leaf as usize * self.stride).load(Relaxed) as usize
    }

    pub(crate) fn set_leaf_len(&self, leaf: u32, len: usize) {
        debug_assert!(len <= self.fanout);
        self.word(leaf as usize * self.stride)
            .store(len as u64, Relaxed);
    }

    pub(crate) fn key(&self, leaf: u32, i: usize) -> u64 {
        self.word(self.key_at(leaf, i)).load(Relaxed)
    }

    pub(crate) fn val(&self, leaf: u32, i: usize) -> u64 {
        self.word(self.val_at(leaf, i)).load(Relaxed)
    }

    pub(crate) fn set_entry(&self, leaf: u32, i: usize, key: u64, val: u64) {
        self.word(self.key_at(leaf, i)).store(key, Relaxed);
        self.word(self.val_at(leaf, i)).store(val, Relaxed);
    }

    pub(crate) fn set_val(&self, leaf: u32, i: usize, val: u64) {
        self.word(self.val_at(leaf, i)).store(val, Relaxed);
    }

    /// Shifts entries `[from, len)` of a leaf one place right (`delta = 1`)
    /// or left (`delta = -1`).
    pub(crate) fn shift(&self, leaf: u32, from: usize, len: usize, right: bool) {
        if right {
            for i in (from..len).rev() {
                self.set_entry(leaf, i + 1, self.key(leaf, i), self.val(leaf, i));
            }
        } else {
            for i in from..len {
                self.set_entry(leaf, i - 1, self.key(leaf, i), self.val(leaf, i));
            }
        }
    }

    pub(crate) fn fences(&self, leaf: u32) -> (u64, u64) {
        (self.leaf_lo[leaf as usize], self.leaf_hi[leaf as usize])
    }

    pub(crate) fn inner_len(&self, node: u32) -> usize {
        self.inner_len[node as usize] as usize
    }

    pub(crate) fn inner_key(&self, node: u32, i: usize) -> u64 {
        self.inner_keys[node as usize * self.fanout + i]
    }

    pub(crate) fn child(&self, node: u32, i: usize) -> u32 {
        self.inner_children[node as usize * (self.fanout + 1) + i]
    }

    /// Index of the child of `node` that `key` is routed to: the number of
    /// separators at or below `key`. A branchless count, which the compiler
    /// vectorizes, reads the node's cache lines in order; at 10 million
    /// keys it beats a binary search.
    fn child_index(&self, node: u32, key: u64) -> usize {
        let base = node as usize * self.fanout;
        let keys = &self.inner_keys[base..base + self.inner_len(node)];
        keys.iter().map(|&k| usize::from(k <= key)).sum()
    }

    /// The leaf `key` is routed to.
    pub(crate) fn leaf_of(&self, key: u64) -> u32 {
        let mut node = self.root;
        for _ in 0..self.height {
            node = self.child(node, self.child_index(node, key));
        }
        node
    }

    /// The leaf `key` is routed to, and the path to it.
    pub(crate) fn path_to(&self, key: u64) -> (u32, Path) {
        let mut path = Path {
            steps: [(0, 0); MAX_HEIGHT],
            len: 0,
        };
        let mut node = self.root;
        for _ in 0..self.height {
            let i = self.child_index(node, key);
            path.steps[path.len] = (node, i as u32);
            path.len += 1;
            node = self.child(node, i);
        }
        (node, path)
    }

    /// Position of `key` in `leaf`: `Ok(i)` if present, `Err(i)` where it would go.
    pub(crate) fn search(&self, leaf: u32, key: u64) -> Result<usize, usize> {
        let (mut lo, mut hi) = (0, self.leaf_len(leaf));
        while lo < hi {
            let mid = (lo + hi) / 2;
            let k = self.key(leaf, mid);
            if k < key {
                lo = mid + 1;
            } else if k > key {
                hi = mid;
            } else {
                return Ok(mid);
            }
        }
        Err(lo)
    }

    /// Leaves in key order.
    pub(crate) fn leaves(&self) -> impl Iterator<Item = u32> + '_ {
        let mut at = self.leaf_of(0);
        std::iter::from_fn(move || {
            (at != NIL).then(|| {
                let leaf = at;
                at = self.leaf_next[leaf as usize];
                leaf
            })
        })
    }

    pub(crate) fn alloc_leaf(&mut self, lo: u64, hi: u64, next: u32) -> u32 {
        let leaf = match self.leaf_free.pop() {
            Some(leaf) => leaf,
            None => {
                let leaf = self.leaf_count as u32;
                assert!(leaf < NIL, "the tree is out of leaf ids");
                self.leaf_count += 1;
                self.leaf_next.push(NIL);
                self.leaf_lo.push(0);
                self.leaf_hi.push(0);
                let lines = self.stride / WORDS_PER_LINE;
                self.leaf_words.extend((0..lines).map(|_| Line::default()));
                leaf
            }
        };
        self.set_leaf_len(leaf, 0);
        self.leaf_next[leaf as usize] = next;
        self.leaf_lo[leaf as usize] = lo;
        self.leaf_hi[leaf as usize] = hi;
        leaf
    }

    pub(crate) fn alloc_inner(&mut self) -> u32 {
        let node = match self.inner_free.pop() {
            Some(node) => node,
            None => {
                let node = self.inner_len.len() as u32;
                assert!(node < NIL, "the tree is out of node ids");
                self.inner_len.push(0);
                self.inner_keys.extend(std::iter::repeat_n(0, self.fanout));
                self.inner_children
                    .extend(std::iter::repeat_n(NIL, self.fanout + 1));
                node
            }
        };
        self.inner_len[node as usize] = 0;
        node
    }

    /// Checks every structural invariant; panics naming the first broken
    /// one. For tests.
    pub fn assert_invariants(&self) {
        if let Err(broken) = self.check() {
            panic!("{broken}");
        }
    }

    /// Checks every structural invariant, reading nothing out of bounds:
    /// the first broken one, named. A restored image is checked so.
    pub fn check(&self) -> Result<(), String> {
        let nodes = self.inner_len.len();
        if self.inner_keys.len() != nodes * self.fanout
            || self.inner_children.len() != nodes * (self.fanout + 1)
        {
            return Err("inner node arrays of different lengths".into());
        }
        let leaves = self.leaf_count;
        if self.leaf_words.len() * WORDS_PER_LINE != leaves * self.stride
            || self.leaf_next.len() != leaves
            || self.leaf_lo.len() != leaves
            || self.leaf_hi.len() != leaves
        {
            return Err("leaf arrays of different lengths".into());
        }
        if self.leaf_free.iter().any(|&l| l as usize >= leaves)
            || self.inner_free.iter().any(|&n| n as usize >= nodes)
        {
            return Err("a free list names a node that does not exist".into());
        }
        if self.height as usize >= MAX_HEIGHT {
            return Err(format!("height {} too large", self.height));
        }
        let mut order = Vec::new();
        self.check_node(self.root, 0, 0, u64::MAX, &mut order)?;
        let mut chain = Vec::new();
        let mut at = order.first().copied().unwrap_or(NIL);
        while at != NIL && chain.len() <= order.len() {
            chain.push(at);
            at = *self
                .leaf_next
                .get(at as usize)
                .ok_or(format!("leaf {at} does not exist"))?;
        }
        if chain != order {
            return Err("the leaf chain is not the leaves in key order".into());
        }
        Ok(())
    }

    fn check_node(
        &self,
        node: u32,
        depth: u32,
        lo: u64,
        hi: u64,
        leaves: &mut Vec<u32>,
    ) -> Result<(), String> {
        let root = depth == 0;
        if depth == self.height {
            if node as usize >= self.leaf_count {
                return Err(format!("leaf {node} does not exist"));
            }
            if leaves.len() >= self.leaf_count {
                return Err(format!("leaf {node} is reached twice"));
            }
            let len = self.leaf_len(node);
            if len > self.fanout {
                return Err(format!("leaf {node} has {len} keys"));
            }
            if self.fences(node) != (lo, hi) {
                return Err(format!("fences of leaf {node}"));
            }
            if !root && len < self.min {
                return Err(format!("leaf {node} underfull: {len}"));
            }
            for i in 0..len {
                let k = self.key(node, i);
                if k < lo || k > hi {
                    return Err(format!("key {k} of leaf {node} outside [{lo}, {hi}]"));
                }
                if i > 0 && self.key(node, i - 1) >= k {
                    return Err("keys are not strictly increasing".into());
                }
            }
            leaves.push(node);
            return Ok(());
        }
        if node as usize >= self.inner_len.len() {
            return Err(format!("inner {node} does not exist"));
        }
        let len = self.inner_len(node);
        if len < 1 || len > self.fanout {
            return Err(format!("inner {node} has {len} keys"));
        }
        if !root && len < self.min {
            return Err(format!("inner {node} underfull: {len}"));
        }
        for i in 0..=len {
            let child_lo = if i == 0 {
                lo
            } else {
                self.inner_key(node, i - 1)
            };
            let child_hi = if i == len {
                hi
            } else {
                self.inner_key(node, i).wrapping_sub(1)
            };
            if child_lo > child_hi || (i < len && self.inner_key(node, i) == 0) {
                return Err(format!("empty key range under inner {node}"));
            }
            self.check_node(self.child(node, i), depth + 1, child_lo, child_hi, leaves)?;
        }
        Ok(())
    }
}

/// SplitMix64's finalizer.
pub(crate) fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}
