//! Parallel mode (`&BTree`): each thread owns the keys of its partition.
//!
//! A leaf is *own* to a thread when its fences lie inside the thread's
//! partition (no other thread can reach it), *shared* when they span several
//! partitions, and *foreign* when they lie outside. A thread may:
//! - read and update the values of its own keys, in own and shared leaves;
//! - insert and delete in own leaves, when no split or merge is needed;
//! - scan its own keys, stopping at the end of its partition.
//!
//! Entries never move in a shared leaf, and a foreign leaf is never read, so
//! what a thread observes depends only on its own partition's history: the
//! safety checks built on it give every replica the same verdict.
//!
//! Anything else is refused with a [`ContractViolation`] that names the leaf
//! and the threads involved; the tree is left unchanged.

use std::fmt;

use thiserror::Error;

use super::{BTree, NIL};
use crate::partition::Partitioning;

/// What a thread tried that the contract forbids.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ViolationKind {
    /// The key belongs to another thread's partition.
    ForeignKey,
    /// The leaf lies in other threads' partitions only.
    ForeignLeaf,
    /// An insert or delete would move entries in a leaf shared by several threads.
    MoveInSharedLeaf,
    /// An insert or delete would split or merge a leaf.
    ShapeChange,
    /// A scan would read past the end of the thread's partition.
    ScanPastPartition,
}

/// A broken concurrency contract: a bug in a group mapping or a skipped
/// safety check, never a client's mistake.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Error)]
pub struct ContractViolation {
    /// What was tried.
    pub kind: ViolationKind,
    /// The thread that tried it.
    pub thread: usize,
    /// The key involved.
    pub key: u64,
    /// The leaf involved.
    pub leaf: u32,
    /// The leaf's fences.
    pub fences: (u64, u64),
    /// The threads whose partitions the leaf's fences overlap.
    pub owners: (usize, usize),
}

impl fmt::Display for ContractViolation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let (lo, hi) = self.fences;
        let (first, last) = self.owners;
        write!(
            f,
            "{:?}: thread {} on key {} in leaf {} [{lo}, {hi}], which belongs to threads {first}..={last}",
            self.kind, self.thread, self.key, self.leaf
        )
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Scope {
    Own,
    Shared,
}

impl BTree {
    fn violation(
        &self,
        p: &Partitioning,
        thread: usize,
        kind: ViolationKind,
        key: u64,
        leaf: u32,
    ) -> ContractViolation {
        let fences = self.fences(leaf);
        ContractViolation {
            kind,
            thread,
            key,
            leaf,
            fences,
            owners: (p.owner(fences.0), p.owner(fences.1)),
        }
    }

    fn scope(&self, p: &Partitioning, thread: usize, leaf: u32) -> Option<Scope> {
        let (lo, hi) = self.fences(leaf);
        let (plo, phi) = p.range(thread);
        if hi < plo || lo > phi {
            None
        } else if lo >= plo && hi <= phi {
            Some(Scope::Own)
        } else {
            Some(Scope::Shared)
        }
    }

    /// The leaf of one of `thread`'s keys. The leaf's fences hold the key,
    /// which lies in the partition, so the leaf is own or shared, never
    /// foreign: reads and value updates need not look at its fences (a
    /// cache miss per command on a large tree).
    fn own_leaf(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
    ) -> Result<u32, ContractViolation> {
        let leaf = self.leaf_of(key);
        if p.owner(key) != thread {
            return Err(self.violation(p, thread, ViolationKind::ForeignKey, key, leaf));
        }
        debug_assert!(
            self.scope(p, thread, leaf).is_some(),
            "leaf {leaf} holds key {key}"
        );
        Ok(leaf)
    }

    /// The leaf of `key`, checked to be reachable by `thread`, and whether
    /// other threads reach it too.
    fn own_key(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
    ) -> Result<(u32, Scope), ContractViolation> {
        let leaf = self.own_leaf(p, thread, key)?;
        let scope = self
            .scope(p, thread, leaf)
            .ok_or_else(|| self.violation(p, thread, ViolationKind::ForeignLeaf, key, leaf))?;
        Ok((leaf, scope))
    }

    /// The value of one of `thread`'s keys.
    pub fn get_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
    ) -> Result<Option<u64>, ContractViolation> {
        let leaf = self.own_leaf(p, thread, key)?;
        Ok(self.search(leaf, key).ok().map(|i| self.val(leaf, i)))
    }

    /// Updates the value of one of `thread`'s existing keys.
    pub fn update_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
        value: u64,
    ) -> Result<Option<u64>, ContractViolation> {
        let leaf = self.own_leaf(p, thread, key)?;
        Ok(self.search(leaf, key).ok().map(|i| {
            let old = self.val(leaf, i);
            self.set_val(leaf, i, value);
            old
        }))
    }

    /// Inserts or replaces one of `thread`'s keys without changing the shape.
    pub fn insert_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
        value: u64,
    ) -> Result<Option<u64>, ContractViolation> {
        let (leaf, scope) = self.own_key(p, thread, key)?;
        let pos = match self.search(leaf, key) {
            Ok(i) => {
                let old = self.val(leaf, i);
                self.set_val(leaf, i, value);
                return Ok(Some(old));
            }
            Err(pos) => pos,
        };
        if scope != Scope::Own {
            return Err(self.violation(p, thread, ViolationKind::MoveInSharedLeaf, key, leaf));
        }
        let len = self.leaf_len(leaf);
        if len >= self.fanout {
            return Err(self.violation(p, thread, ViolationKind::ShapeChange, key, leaf));
        }
        self.shift(leaf, pos, len, true);
        self.set_entry(leaf, pos, key, value);
        self.set_leaf_len(leaf, len + 1);
        Ok(None)
    }

    /// Removes one of `thread`'s keys without changing the shape.
    pub fn remove_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        key: u64,
    ) -> Result<Option<u64>, ContractViolation> {
        let (leaf, scope) = self.own_key(p, thread, key)?;
        let Ok(pos) = self.search(leaf, key) else {
            return Ok(None);
        };
        if scope != Scope::Own {
            return Err(self.violation(p, thread, ViolationKind::MoveInSharedLeaf, key, leaf));
        }
        let len = self.leaf_len(leaf);
        if !self.may_shrink(len) {
            return Err(self.violation(p, thread, ViolationKind::ShapeChange, key, leaf));
        }
        let old = self.val(leaf, pos);
        self.shift(leaf, pos + 1, len, false);
        self.set_leaf_len(leaf, len - 1);
        Ok(Some(old))
    }

    fn may_shrink(&self, len: usize) -> bool {
        self.height == 0 || len > self.min
    }

    /// Up to `count` of `thread`'s entries from `from` on. Refused if the
    /// scan would need keys beyond the partition.
    pub fn scan_shared(
        &self,
        p: &Partitioning,
        thread: usize,
        from: u64,
        count: usize,
    ) -> Result<Vec<(u64, u64)>, ContractViolation> {
        let mut out = Vec::with_capacity(count.min(1024));
        self.walk_partition(p, thread, from, count, |k, v| out.push((k, v)))?;
        Ok(out)
    }

    /// Visits the entries a partition-bound scan returns; fails where the
    /// scan would leave the partition.
    fn walk_partition(
        &self,
        p: &Partitioning,
        thread: usize,
        from: u64,
        count: usize,
        mut visit: impl FnMut(u64, u64),
    ) -> Result<(), ContractViolation> {
        let (mut leaf, _) = self.own_key(p, thread, from)?;
        let (_, phi) = p.range(thread);
        let mut i = match self.search(leaf, from) {
            Ok(i) | Err(i) => i,
        };
        let mut seen = 0;
        while seen < count {
            let len = self.leaf_len(leaf);
            while i < len && seen < count {
                let k = self.key(leaf, i);
                if k > phi {
                    return Err(self.violation(
                        p,
                        thread,
                        ViolationKind::ScanPastPartition,
                        from,
                        leaf,
                    ));
                }
                visit(k, self.val(leaf, i));
                seen += 1;
                i += 1;
            }
            if seen == count {
                break;
            }
            let next = self.leaf_next[leaf as usize];
            if next == NIL {
                break;
            }
            if self.scope(p, thread, next).is_none() {
                return Err(self.violation(
                    p,
                    thread,
                    ViolationKind::ScanPastPartition,
                    from,
                    next,
                ));
            }
            leaf = next;
            i = 0;
        }
        Ok(())
    }

    /// Safety check of an insert (opt-PSMR paper, section V-B): the key
    /// exists (the insert only replaces a value), or its leaf lies inside the
    /// thread's partition and has room.
    pub fn insert_is_safe(&self, p: &Partitioning, thread: usize, key: u64) -> bool {
        let Ok((leaf, scope)) = self.own_key(p, thread, key) else {
            return false;
        };
        self.search(leaf, key).is_ok() || (scope == Scope::Own && self.leaf_len(leaf) < self.fanout)
    }

    /// Safety check of a delete: the key is absent (nothing to do), or its
    /// leaf lies inside the thread's partition and stays at least half full.
    pub fn remove_is_safe(&self, p: &Partitioning, thread: usize, key: u64) -> bool {
        let Ok((leaf, scope)) = self.own_key(p, thread, key) else {
            return false;
        };
        self.search(leaf, key).is_err()
            || (scope == Scope::Own && self.may_shrink(self.leaf_len(leaf)))
    }

    /// Safety check of a scan: all of it lies in the thread's partition.
    pub fn scan_is_safe(&self, p: &Partitioning, thread: usize, from: u64, count: usize) -> bool {
        self.walk_partition(p, thread, from, count, |_, _| {})
            .is_ok()
    }
}
