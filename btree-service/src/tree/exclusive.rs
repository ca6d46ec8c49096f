//! Operations with exclusive access (`&mut BTree`): they may split and
//! merge nodes. Splits keep both halves at least half full; a leaf or inner
//! node below half full borrows from a sibling or merges with one; a root
//! with a single child is removed.

use super::{BTree, NIL, Path};

impl BTree {
    /// Inserts or replaces; returns the previous value.
    pub fn insert(&mut self, key: u64, value: u64) -> Option<u64> {
        let (leaf, path) = self.path_to(key);
        let pos = match self.search(leaf, key) {
            Ok(i) => {
                let old = self.val(leaf, i);
                self.set_val(leaf, i, value);
                return Some(old);
            }
            Err(pos) => pos,
        };
        let len = self.leaf_len(leaf);
        if len < self.fanout {
            self.shift(leaf, pos, len, true);
            self.set_entry(leaf, pos, key, value);
            self.set_leaf_len(leaf, len + 1);
            return None;
        }
        let (separator, right) = self.split_leaf(leaf, pos, key, value);
        self.insert_separator(&path, path.len, separator, right);
        None
    }

    /// Updates the value of an existing key; returns the previous value.
    pub fn update(&mut self, key: u64, value: u64) -> Option<u64> {
        let leaf = self.leaf_of(key);
        let i = self.search(leaf, key).ok()?;
        let old = self.val(leaf, i);
        self.set_val(leaf, i, value);
        Some(old)
    }

    /// Splits a full leaf while inserting `(key, value)` at `pos`; returns
    /// the separator and the new right leaf.
    fn split_leaf(&mut self, leaf: u32, pos: usize, key: u64, value: u64) -> (u64, u32) {
        let f = self.fanout;
        let mut entries: Vec<(u64, u64)> = (0..f)
            .map(|i| (self.key(leaf, i), self.val(leaf, i)))
            .collect();
        entries.insert(pos, (key, value));
        let keep = entries.len().div_ceil(2);
        let separator = entries[keep].0;
        let (_, hi) = self.fences(leaf);
        let right = self.alloc_leaf(separator, hi, self.leaf_next[leaf as usize]);
        for (i, &(k, v)) in entries[..keep].iter().enumerate() {
            self.set_entry(leaf, i, k, v);
        }
        for (i, &(k, v)) in entries[keep..].iter().enumerate() {
            self.set_entry(right, i, k, v);
        }
        self.set_leaf_len(leaf, keep);
        self.set_leaf_len(right, entries.len() - keep);
        self.leaf_hi[leaf as usize] = separator - 1;
        self.leaf_next[leaf as usize] = right;
        (separator, right)
    }

    /// Inserts `separator` and the node `right` after it into the parent at
    /// `level` of `path` (splitting upwards as needed).
    fn insert_separator(&mut self, path: &Path, level: usize, separator: u64, right: u32) {
        if level == 0 {
            let old_root = self.root;
            let root = self.alloc_inner();
            self.set_inner(root, &[separator], &[old_root, right]);
            self.root = root;
            self.height += 1;
            return;
        }
        let (node, at) = path.steps[level - 1];
        let (mut keys, mut children) = self.inner_contents(node);
        keys.insert(at as usize, separator);
        children.insert(at as usize + 1, right);
        if keys.len() <= self.fanout {
            self.set_inner(node, &keys, &children);
            return;
        }
        let mid = keys.len() / 2;
        let up = keys[mid];
        let sibling = self.alloc_inner();
        self.set_inner(node, &keys[..mid], &children[..=mid]);
        self.set_inner(sibling, &keys[mid + 1..], &children[mid + 1..]);
        self.insert_separator(path, level - 1, up, sibling);
    }

    fn inner_contents(&self, node: u32) -> (Vec<u64>, Vec<u32>) {
        let len = self.inner_len(node);
        let keys = (0..len).map(|i| self.inner_key(node, i)).collect();
        let children = (0..=len).map(|i| self.child(node, i)).collect();
        (keys, children)
    }

    fn set_inner(&mut self, node: u32, keys: &[u64], children: &[u32]) {
        debug_assert_eq!(keys.len() + 1, children.len());
        debug_assert!(keys.len() <= self.fanout);
        let (kb, cb) = (
            node as usize * self.fanout,
            node as usize * (self.fanout + 1),
        );
        self.inner_keys[kb..kb + keys.len()].copy_from_slice(keys);
        self.inner_children[cb..cb + children.len()].copy_from_slice(children);
        self.inner_len[node as usize] = keys.len() as u32;
    }

    /// Removes `key`; returns its value.
    pub fn remove(&mut self, key: u64) -> Option<u64> {
        let (leaf, path) = self.path_to(key);
        let pos = self.search(leaf, key).ok()?;
        let old = self.val(leaf, pos);
        let len = self.leaf_len(leaf);
        self.shift(leaf, pos + 1, len, false);
        self.set_leaf_len(leaf, len - 1);
        if self.height > 0 && len - 1 < self.min {
            self.rebalance_leaf(&path, leaf);
        }
        Some(old)
    }

    /// Fixes an underfull leaf: borrow from a sibling, else merge.
    fn rebalance_leaf(&mut self, path: &Path, leaf: u32) {
        let (parent, at) = path.steps[path.len - 1];
        let at = at as usize;
        let parent_len = self.inner_len(parent);
        let left = (at > 0).then(|| self.child(parent, at - 1));
        let right = (at < parent_len).then(|| self.child(parent, at + 1));
        if let Some(left) = left.filter(|&l| self.leaf_len(l) > self.min) {
            self.borrow_from_left_leaf(parent, at, left, leaf);
        } else if let Some(right) = right.filter(|&r| self.leaf_len(r) > self.min) {
            self.borrow_from_right_leaf(parent, at, leaf, right);
        } else if let Some(left) = left {
            self.merge_leaves(left, leaf);
            self.remove_from_inner(path, path.len - 1, at - 1);
        } else {
            let right = right.expect("a non-root leaf has a sibling");
            self.merge_leaves(leaf, right);
            self.remove_from_inner(path, path.len - 1, at);
        }
    }

    fn borrow_from_left_leaf(&mut self, parent: u32, at: usize, left: u32, leaf: u32) {
        let left_len = self.leaf_len(left);
        let (k, v) = (self.key(left, left_len - 1), self.val(left, left_len - 1));
        self.set_leaf_len(left, left_len - 1);
        let len = self.leaf_len(leaf);
        self.shift(leaf, 0, len, true);
        self.set_entry(leaf, 0, k, v);
        self.set_leaf_len(leaf, len + 1);
        self.set_separator(parent, at - 1, k);
        self.leaf_hi[left as usize] = k - 1;
        self.leaf_lo[leaf as usize] = k;
    }

    fn borrow_from_right_leaf(&mut self, parent: u32, at: usize, leaf: u32, right: u32) {
        let (k, v) = (self.key(right, 0), self.val(right, 0));
        let right_len = self.leaf_len(right);
        self.shift(right, 1, right_len, false);
        self.set_leaf_len(right, right_len - 1);
        let len = self.leaf_len(leaf);
        self.set_entry(leaf, len, k, v);
        self.set_leaf_len(leaf, len + 1);
        let separator = self.key(right, 0);
        self.set_separator(parent, at, separator);
        self.leaf_hi[leaf as usize] = separator - 1;
        self.leaf_lo[right as usize] = separator;
    }

    fn set_separator(&mut self, node: u32, i: usize, key: u64) {
        self.inner_keys[node as usize * self.fanout + i] = key;
    }

    /// Moves every entry of `right` into `left` and frees `right`.
    fn merge_leaves(&mut self, left: u32, right: u32) {
        let (left_len, right_len) = (self.leaf_len(left), self.leaf_len(right));
        debug_assert!(left_len + right_len <= self.fanout);
        for i in 0..right_len {
            self.set_entry(left, left_len + i, self.key(right, i), self.val(right, i));
        }
        self.set_leaf_len(left, left_len + right_len);
        self.leaf_hi[left as usize] = self.leaf_hi[right as usize];
        self.leaf_next[left as usize] = self.leaf_next[right as usize];
        self.set_leaf_len(right, 0);
        self.leaf_next[right as usize] = NIL;
        self.leaf_free.push(right);
    }

    /// Removes separator `key_at` and the child after it from the inner node
    /// at `level` of `path`, then fixes that node if it became underfull.
    fn remove_from_inner(&mut self, path: &Path, level: usize, key_at: usize) {
        let (node, _) = path.steps[level];
        let (mut keys, mut children) = self.inner_contents(node);
        keys.remove(key_at);
        children.remove(key_at + 1);
        if level == 0 && keys.is_empty() {
            self.root = children[0];
            self.height -= 1;
            self.inner_free.push(node);
            return;
        }
        self.set_inner(node, &keys, &children);
        if level > 0 && keys.len() < self.min {
            self.rebalance_inner(path, level);
        }
    }

    /// Fixes the underfull inner node at `level` of `path`.
    fn rebalance_inner(&mut self, path: &Path, level: usize) {
        let (node, _) = path.steps[level];
        let (parent, at) = path.steps[level - 1];
        let at = at as usize;
        let parent_len = self.inner_len(parent);
        let left = (at > 0).then(|| self.child(parent, at - 1));
        let right = (at < parent_len).then(|| self.child(parent, at + 1));
        let (mut pkeys, pchildren) = self.inner_contents(parent);
        let (mut keys, mut children) = self.inner_contents(node);
        if let Some(left) = left.filter(|&l| self.inner_len(l) > self.min) {
            let (mut lkeys, mut lchildren) = self.inner_contents(left);
            keys.insert(0, pkeys[at - 1]);
            children.insert(0, lchildren.pop().expect("a child"));
            pkeys[at - 1] = lkeys.pop().expect("a key");
            self.set_inner(left, &lkeys, &lchildren);
            self.set_inner(node, &keys, &children);
            self.set_inner(parent, &pkeys, &pchildren);
        } else if let Some(right) = right.filter(|&r| self.inner_len(r) > self.min) {
            let (mut rkeys, mut rchildren) = self.inner_contents(right);
            keys.push(pkeys[at]);
            children.push(rchildren.remove(0));
            pkeys[at] = rkeys.remove(0);
            self.set_inner(right, &rkeys, &rchildren);
            self.set_inner(node, &keys, &children);
            self.set_inner(parent, &pkeys, &pchildren);
        } else if let Some(left) = left {
            self.merge_inner(left, pkeys[at - 1], node);
            self.remove_from_inner(path, level - 1, at - 1);
        } else {
            let right = right.expect("a non-root inner node has a sibling");
            self.merge_inner(node, pkeys[at], right);
            self.remove_from_inner(path, level - 1, at);
        }
    }

    /// `left` absorbs the separator and `right`; `right` is freed.
    fn merge_inner(&mut self, left: u32, separator: u64, right: u32) {
        let (mut keys, mut children) = self.inner_contents(left);
        let (rkeys, rchildren) = self.inner_contents(right);
        keys.push(separator);
        keys.extend(rkeys);
        children.extend(rchildren);
        self.set_inner(left, &keys, &children);
        self.inner_len[right as usize] = 0;
        self.inner_free.push(right);
    }

    /// Up to `count` entries with keys at or above `from`, in order.
    pub fn scan(&self, from: u64, count: usize) -> Vec<(u64, u64)> {
        let mut out = Vec::with_capacity(count.min(1024));
        let mut leaf = self.leaf_of(from);
        let mut i = match self.search(leaf, from) {
            Ok(i) | Err(i) => i,
        };
        while leaf != NIL && out.len() < count {
            let len = self.leaf_len(leaf);
            while i < len && out.len() < count {
                out.push((self.key(leaf, i), self.val(leaf, i)));
                i += 1;
            }
            leaf = self.leaf_next[leaf as usize];
            i = 0;
        }
        out
    }
}
