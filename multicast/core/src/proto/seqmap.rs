//! A map keyed by sequence numbers that are handed out in order and retired
//! in about that order: a proposer's commands, a client's requests.
//!
//! ```text
//!  base ─> [Some a][None][Some c][Some d] <─ base + slots
//!           oldest                 newest
//! ```
//!
//! Entries sit in a `VecDeque` indexed by `seq - base`: an insert is an
//! append, a lookup an index, and a removal clears its slot and drops the
//! cleared slots at the front. The front slot is always occupied, so the
//! oldest key is `base`. With replies that come back out of order (several
//! rings, several threads) a `BTreeMap` paid a walk through cold nodes for
//! each of these; the cost here is a hole per entry retired early, bounded
//! by how far the oldest entry lags the newest: an entry that stays for
//! seconds while thousands a second come and go keeps that many holes of
//! `size_of::<Option<T>>()` bytes, so large values go in a `Box`.

use std::collections::VecDeque;

/// Entries keyed by consecutive `u64`s (see the module doc).
#[derive(Debug)]
pub struct SeqMap<T> {
    base: u64,
    slots: VecDeque<Option<T>>,
    len: usize,
}

impl<T> Default for SeqMap<T> {
    fn default() -> Self {
        SeqMap {
            base: 0,
            slots: VecDeque::new(),
            len: 0,
        }
    }
}

impl<T> SeqMap<T> {
    /// Inserts `value` at `seq`, which must lie past every key present
    /// (keys are handed out in order).
    pub fn insert(&mut self, seq: u64, value: T) {
        if self.slots.is_empty() {
            self.base = seq;
        }
        let end = self.base + self.slots.len() as u64;
        assert!(seq >= end, "key {seq} inserted after key {}", end - 1);
        for _ in end..seq {
            self.slots.push_back(None);
        }
        self.slots.push_back(Some(value));
        self.len += 1;
    }

    fn index(&self, seq: u64) -> Option<usize> {
        let at = usize::try_from(seq.checked_sub(self.base)?).ok()?;
        (at < self.slots.len()).then_some(at)
    }

    /// The entry at `seq`.
    pub fn get(&self, seq: u64) -> Option<&T> {
        self.index(seq).and_then(|at| self.slots[at].as_ref())
    }

    /// The entry at `seq`, to change.
    pub fn get_mut(&mut self, seq: u64) -> Option<&mut T> {
        self.index(seq).and_then(|at| self.slots[at].as_mut())
    }

    /// Removes and returns the entry at `seq`.
    pub fn remove(&mut self, seq: u64) -> Option<T> {
        let at = self.index(seq)?;
        let value = self.slots[at].take()?;
        self.len -= 1;
        while matches!(self.slots.front(), Some(None)) {
            self.slots.pop_front();
            self.base += 1;
        }
        Some(value)
    }

    /// The oldest key present.
    pub fn first(&self) -> Option<u64> {
        debug_assert!(self.slots.front().is_none_or(Option::is_some));
        (!self.slots.is_empty()).then_some(self.base)
    }

    /// The entries present, oldest key first.
    pub fn iter(&self) -> impl Iterator<Item = (u64, &T)> + '_ {
        let base = self.base;
        self.slots
            .iter()
            .enumerate()
            .filter_map(move |(i, slot)| Some((base + i as u64, slot.as_ref()?)))
    }

    /// Entries present.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no entry is present.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;

    use super::*;

    /// Against a `BTreeMap` over random inserts (in key order, with gaps) and
    /// removals in any order; the seed is in every message.
    #[test]
    fn the_map_answers_like_a_btree_map() {
        for seed in 0..64u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let (mut map, mut model) = (SeqMap::default(), BTreeMap::new());
            let mut next = 0u64;
            for step in 0..500 {
                if rng.random_bool(0.55) {
                    next += rng.random_range(1..3);
                    map.insert(next, step);
                    model.insert(next, step);
                } else {
                    let key = rng.random_range(0..=next + 1);
                    assert_eq!(
                        map.remove(key),
                        model.remove(&key),
                        "seed {seed} step {step}"
                    );
                }
                let probe = rng.random_range(0..=next + 1);
                assert_eq!(map.get(probe), model.get(&probe), "seed {seed} step {step}");
                assert_eq!(
                    map.first(),
                    model.keys().next().copied(),
                    "seed {seed} step {step}"
                );
                assert_eq!(map.len(), model.len(), "seed {seed} step {step}");
                let entries: Vec<(u64, i32)> = map.iter().map(|(k, v)| (k, *v)).collect();
                let expected: Vec<(u64, i32)> = model.iter().map(|(k, v)| (*k, *v)).collect();
                assert_eq!(entries, expected, "seed {seed} step {step}");
            }
        }
    }

    #[test]
    #[should_panic(expected = "inserted after")]
    fn a_key_out_of_order_is_refused() {
        let mut map = SeqMap::default();
        map.insert(5, ());
        map.insert(4, ());
    }
}
