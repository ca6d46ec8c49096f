//! Building a tree from sorted entries (preload, restore) and snapshots.
//!
//! Bulk loading fills leaves to a fill factor, then builds each inner level
//! from the one below; separators are the children's lower fences. A last
//! node too small to stand alone is merged into its neighbour when they fit
//! in one node, or the two are split evenly. Ten million keys load in about
//! a second.
//!
//! Snapshot format, little-endian:
//! `b"PSMRBT01" | fanout: u32 | count: u64 | count × (key: u64, value: u64)`.

use thiserror::Error;

use super::{BTree, NIL};

const MAGIC: &[u8; 8] = b"PSMRBT01";
const HEADER: usize = 8 + 4 + 8;

/// Why a snapshot could not be restored.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum SnapshotError {
    /// The bytes do not start with the snapshot magic.
    #[error("not a B+-tree snapshot (bad magic)")]
    BadMagic,
    /// The snapshot is shorter than its header says.
    #[error("snapshot truncated: {expected} bytes expected, {got} present")]
    Truncated {
        /// Bytes the header announces.
        expected: u64,
        /// Bytes present.
        got: u64,
    },
    /// Keys are not strictly increasing at entry `index`.
    #[error("snapshot entries out of order at entry {index}")]
    Unsorted {
        /// The entry.
        index: u64,
    },
}

/// Splits `n` items into groups of about `target` (each at most `max`),
/// none smaller than `min` unless there is only one group.
fn groups(n: usize, target: usize, min: usize, max: usize) -> Vec<usize> {
    let mut sizes = Vec::with_capacity(n / target.max(1) + 1);
    let mut left = n;
    while left > 0 {
        let take = target.min(left);
        sizes.push(take);
        left -= take;
    }
    if sizes.len() >= 2 {
        let last = sizes[sizes.len() - 1];
        if last < min {
            let prev = sizes[sizes.len() - 2];
            sizes.truncate(sizes.len() - 2);
            if prev + last <= max {
                sizes.push(prev + last);
            } else {
                sizes.push((prev + last).div_ceil(2));
                sizes.push((prev + last) / 2);
            }
        }
    }
    sizes
}

impl BTree {
    /// A tree of `entries`, which must be sorted by key without duplicates,
    /// with leaves and inner nodes filled to `fill` (0.5 to 1.0) of `fanout`.
    pub fn bulk_load(
        fanout: usize,
        fill: f64,
        entries: impl IntoIterator<Item = (u64, u64)>,
    ) -> BTree {
        let entries: Vec<(u64, u64)> = entries.into_iter().collect();
        debug_assert!(
            entries.windows(2).all(|w| w[0].0 < w[1].0),
            "bulk_load needs sorted, unique keys"
        );
        let mut tree = BTree::new(fanout);
        let f = tree.fanout;
        let fill = fill.clamp(0.5, 1.0);
        let n = entries.len();
        if n == 0 {
            return tree;
        }
        let leaf_target = ((f as f64 * fill).round() as usize).clamp(tree.min.max(1), f);
        let mut entries = entries.into_iter();
        let mut level: Vec<(u32, u64)> = Vec::new();
        tree.leaf_free.push(tree.root);
        for size in groups(n, leaf_target, tree.min, f) {
            let leaf = tree.alloc_leaf(0, u64::MAX, NIL);
            for i in 0..size {
                let (k, v) = entries.next().expect("counted");
                tree.set_entry(leaf, i, k, v);
            }
            tree.set_leaf_len(leaf, size);
            let lo = if level.is_empty() {
                0
            } else {
                tree.key(leaf, 0)
            };
            if let Some(&(prev, _)) = level.last() {
                tree.leaf_next[prev as usize] = leaf;
                tree.leaf_hi[prev as usize] = lo - 1;
            }
            tree.leaf_lo[leaf as usize] = lo;
            level.push((leaf, lo));
        }
        let inner_target = ((f as f64 * fill).round() as usize + 1).clamp(tree.min + 1, f + 1);
        while level.len() > 1 {
            level = tree.build_level(&level, inner_target);
            tree.height += 1;
        }
        tree.root = level[0].0;
        tree
    }

    /// Builds the inner level above `children` (node, lower fence).
    fn build_level(&mut self, children: &[(u32, u64)], target: usize) -> Vec<(u32, u64)> {
        let f = self.fanout;
        let mut parents = Vec::new();
        let mut at = 0;
        for size in groups(children.len(), target, self.min + 1, f + 1) {
            let group = &children[at..at + size];
            at += size;
            let node = self.alloc_inner();
            let keys: Vec<u64> = group[1..].iter().map(|&(_, lo)| lo).collect();
            let kids: Vec<u32> = group.iter().map(|&(c, _)| c).collect();
            let (kb, cb) = (node as usize * f, node as usize * (f + 1));
            self.inner_keys[kb..kb + keys.len()].copy_from_slice(&keys);
            self.inner_children[cb..cb + kids.len()].copy_from_slice(&kids);
            self.inner_len[node as usize] = keys.len() as u32;
            parents.push((node, group[0].1));
        }
        parents
    }

    /// The entries as a snapshot.
    pub fn snapshot(&self) -> Vec<u8> {
        let n = self.len();
        let mut out = Vec::with_capacity(HEADER + n * 16);
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&(self.fanout as u32).to_le_bytes());
        out.extend_from_slice(&(n as u64).to_le_bytes());
        for (k, v) in self.iter() {
            out.extend_from_slice(&k.to_le_bytes());
            out.extend_from_slice(&v.to_le_bytes());
        }
        out
    }

    /// A tree of the entries of `snapshot`, filled to `fill`.
    pub fn restore(snapshot: &[u8], fill: f64) -> Result<BTree, SnapshotError> {
        if snapshot.len() < HEADER || &snapshot[..8] != MAGIC {
            return Err(SnapshotError::BadMagic);
        }
        let word =
            |at: usize| u64::from_le_bytes(snapshot[at..at + 8].try_into().expect("8 bytes"));
        let fanout = u32::from_le_bytes(snapshot[8..12].try_into().expect("4 bytes")) as usize;
        let count = word(12);
        let expected = (HEADER as u64).saturating_add(count.saturating_mul(16));
        if expected != snapshot.len() as u64 {
            return Err(SnapshotError::Truncated {
                expected,
                got: snapshot.len() as u64,
            });
        }
        let entries: Vec<(u64, u64)> = (0..count as usize)
            .map(|i| (word(HEADER + i * 16), word(HEADER + i * 16 + 8)))
            .collect();
        if let Some(i) = entries.windows(2).position(|w| w[0].0 >= w[1].0) {
            return Err(SnapshotError::Unsorted {
                index: i as u64 + 1,
            });
        }
        Ok(BTree::bulk_load(fanout, fill, entries))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_respect_the_bounds() {
        assert_eq!(groups(10, 4, 2, 4), vec![4, 4, 2]);
        assert_eq!(groups(9, 4, 2, 4), vec![4, 3, 2]);
        assert_eq!(groups(3, 4, 2, 4), vec![3]);
        for n in 1..200 {
            let sizes = groups(n, 7, 5, 10);
            assert_eq!(sizes.iter().sum::<usize>(), n);
            assert!(sizes.iter().all(|&s| s <= 10));
            assert!(
                sizes.len() == 1 || sizes.iter().all(|&s| s >= 5),
                "{n}: {sizes:?}"
            );
        }
    }

    #[test]
    fn bulk_loaded_trees_are_valid_at_every_size_and_fill() {
        for fanout in [4, 5, 8, 16] {
            for fill in [0.5, 0.7, 1.0] {
                for n in [0, 1, 2, 3, 7, 50, 301] {
                    let tree = BTree::bulk_load(fanout, fill, (0..n).map(|k| (k * 3, k)));
                    tree.assert_invariants();
                    assert_eq!(tree.len(), n as usize);
                    assert_eq!(tree.get(3 * (n / 2)), (n > 0).then_some(n / 2));
                }
            }
        }
    }

    #[test]
    fn snapshots_round_trip_and_bad_ones_are_refused() {
        let tree = BTree::bulk_load(8, 0.7, (0..100).map(|k| (k * 2, k)));
        let snap = tree.snapshot();
        let back = BTree::restore(&snap, 0.7).unwrap();
        back.assert_invariants();
        assert_eq!(
            back.iter().collect::<Vec<_>>(),
            tree.iter().collect::<Vec<_>>()
        );
        assert_eq!(
            BTree::restore(b"nonsense", 0.7).unwrap_err(),
            SnapshotError::BadMagic
        );
        assert!(matches!(
            BTree::restore(&snap[..snap.len() - 3], 0.7),
            Err(SnapshotError::Truncated { .. })
        ));
        let mut unsorted = snap.clone();
        unsorted[HEADER..HEADER + 8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert_eq!(
            BTree::restore(&unsorted, 0.7).unwrap_err(),
            SnapshotError::Unsorted { index: 1 }
        );
    }
}
