//! The deterministic merge of several rings at a learner (docs/ARCHITECTURE.md, "Vocabulary").
//!
//! Rings are taken in ring-id order, `M` instances from each per turn,
//! round-robin. A skip of `n` counts as `n` instances: it becomes credit that
//! the ring's next turns consume without waiting. A batch spanning `n`
//! positions is a batch followed by a skip of `n - 1`. Two mergers fed the same
//! per-ring sequences produce the same merged sequence, whatever the timing of
//! the feeds; that is what makes two replica threads that share rings A and B
//! order A's and B's commands the same way.
//!
//! When every ring has credit for whole turns, those rounds are consumed at
//! once, so a large skip costs O(rings), not O(n).

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::types::{Command, Instance, RingId, Value};

/// A batch in merge order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Merged {
    /// The ring it was decided in.
    pub ring: RingId,
    /// Its instance in that ring.
    pub instance: Instance,
    /// Its commands (never empty).
    pub commands: Arc<[Command]>,
}

/// Why a merger could not be built or fed.
#[derive(Debug, Error, PartialEq, Eq)]
pub enum MergeError {
    /// A merger needs at least one ring.
    #[error("a merge needs at least one ring")]
    NoRings,
    /// M must be at least 1.
    #[error("merge M must be at least 1")]
    ZeroM,
    /// The ring is not part of this merge.
    #[error("{ring} is not merged here")]
    UnknownRing {
        /// The ring.
        ring: RingId,
    },
    /// A cut of another merge, or not a cut at all.
    #[error("the merge cut does not fit this merge: {0}")]
    BadCut(&'static str),
}

/// Where a merge stands between two batches: enough to resume it there
/// ([`Merger::resume`]) and produce the rest of the merged sequence as the
/// merger it was taken from will (a replica checkpoint holds one per worker).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MergeCut {
    /// The merged rings, in merge order.
    pub rings: Vec<RingId>,
    /// Per ring, the first instance not merged yet.
    pub next: Vec<Instance>,
    credit: Vec<u64>,
    cursor: usize,
    left: u32,
}

/// Merges the delivered sequences of a set of rings.
#[derive(Debug)]
pub struct Merger {
    rings: Vec<RingId>,
    m: u32,
    queues: Vec<VecDeque<(Instance, Value)>>,
    credit: Vec<u64>,
    cursor: usize,
    left: u32,
    /// Per ring, the instance the next push brings.
    pushed: Vec<Instance>,
}

impl Merger {
    /// A merger of `rings` (any order; duplicates ignored) taking `m` instances per turn.
    pub fn new(rings: &[RingId], m: u32) -> Result<Merger, MergeError> {
        let mut rings = rings.to_vec();
        rings.sort_unstable();
        rings.dedup();
        if rings.is_empty() {
            return Err(MergeError::NoRings);
        }
        if m == 0 {
            return Err(MergeError::ZeroM);
        }
        let n = rings.len();
        Ok(Merger {
            rings,
            m,
            queues: vec![VecDeque::new(); n],
            credit: vec![0; n],
            cursor: 0,
            left: m,
            pushed: vec![0; n],
        })
    }

    /// A merger taking `m` instances per turn that goes on from `cut`: fed
    /// each ring from `cut.next`, it merges what the merger the cut was
    /// taken from merges after it.
    pub fn resume(cut: &MergeCut, m: u32) -> Result<Merger, MergeError> {
        let mut merger = Merger::new(&cut.rings, m)?;
        let n = merger.rings.len();
        if merger.rings != cut.rings {
            return Err(MergeError::BadCut("rings not sorted or repeated"));
        }
        if cut.next.len() != n || cut.credit.len() != n {
            return Err(MergeError::BadCut("not one entry per ring"));
        }
        if cut.cursor >= n || cut.left == 0 || cut.left > m {
            return Err(MergeError::BadCut("turn out of range"));
        }
        merger.credit.clone_from(&cut.credit);
        merger.pushed.clone_from(&cut.next);
        merger.cursor = cut.cursor;
        merger.left = cut.left;
        Ok(merger)
    }

    /// Where the merge stands now, after the last batch polled.
    pub fn cut(&self) -> MergeCut {
        let next = self
            .queues
            .iter()
            .zip(&self.pushed)
            .map(|(q, &pushed)| q.front().map_or(pushed, |(i, _)| *i))
            .collect();
        MergeCut {
            rings: self.rings.clone(),
            next,
            credit: self.credit.clone(),
            cursor: self.cursor,
            left: self.left,
        }
    }

    /// The merged rings, in merge order.
    pub fn rings(&self) -> &[RingId] {
        &self.rings
    }

    /// Feeds the next delivered instance of `ring`. Instances of one ring must
    /// come in order.
    pub fn push(
        &mut self,
        ring: RingId,
        instance: Instance,
        value: Value,
    ) -> Result<(), MergeError> {
        let index = self
            .rings
            .binary_search(&ring)
            .map_err(|_| MergeError::UnknownRing { ring })?;
        let queue = &mut self.queues[index];
        debug_assert!(
            queue.back().is_none_or(|(last, _)| *last < instance),
            "per-ring order"
        );
        queue.push_back((instance, value));
        self.pushed[index] = instance + 1;
        Ok(())
    }

    /// A one-line account of the merge's state: whose turn, how far into it,
    /// and per ring the skip credit and the instances queued.
    pub fn describe(&self) -> String {
        let rings: Vec<String> = self
            .rings
            .iter()
            .enumerate()
            .map(|(i, r)| {
                let next = self.queues[i]
                    .front()
                    .map(|(inst, v)| format!(" next {inst}:{}", v.positions()));
                format!(
                    "{r}: credit {} queued {}{}",
                    self.credit[i],
                    self.queues[i].len(),
                    next.unwrap_or_default()
                )
            })
            .collect();
        format!(
            "turn of {} ({} left); {}",
            self.rings[self.cursor],
            self.left,
            rings.join(", ")
        )
    }

    /// Instances fed and not merged yet.
    pub fn queued(&self) -> usize {
        self.queues.iter().map(VecDeque::len).sum()
    }

    /// The next batch in merge order, or `None` until the ring whose turn it
    /// is has its next instance.
    pub fn poll(&mut self) -> Option<Merged> {
        loop {
            let r = self.cursor;
            if self.credit[r] > 0 {
                let take = self.credit[r].min(u64::from(self.left));
                self.credit[r] -= take;
                self.consume(take as u32);
                continue;
            }
            match self.queues[r].pop_front()? {
                (_, Value::Skip(n)) => self.credit[r] = n,
                (instance, Value::Batch(batch)) => {
                    self.consume(1);
                    self.credit[r] = batch.span() - 1;
                    let commands = batch.shared();
                    if !commands.is_empty() {
                        let ring = self.rings[r];
                        return Some(Merged {
                            ring,
                            instance,
                            commands,
                        });
                    }
                }
            }
        }
    }

    fn consume(&mut self, n: u32) {
        debug_assert!(n <= self.left);
        self.left -= n;
        if self.left > 0 {
            return;
        }
        self.cursor = (self.cursor + 1) % self.rings.len();
        self.left = self.m;
        if self.cursor == 0 {
            let m = u64::from(self.m);
            let rounds = self.credit.iter().map(|c| c / m).min().unwrap_or(0);
            if rounds > 0 {
                self.credit.iter_mut().for_each(|c| *c -= rounds * m);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::proto::types::{CommandId, ProposerId};

    fn batch(tag: u64) -> Value {
        let cmd = Command {
            id: CommandId {
                proposer: ProposerId(tag),
                seq: 0,
            },
            low_water: 0,
            payload: Bytes::new(),
        };
        Value::batch(vec![cmd])
    }

    fn drain(m: &mut Merger) -> Vec<u64> {
        std::iter::from_fn(|| m.poll())
            .map(|b| b.commands[0].id.proposer.0)
            .collect()
    }

    const A: RingId = RingId(1);
    const B: RingId = RingId(2);

    #[test]
    fn round_robin_m_per_ring_in_ring_id_order() {
        let mut m = Merger::new(&[B, A], 2).unwrap();
        for i in 0..4 {
            m.push(A, i, batch(10 + i)).unwrap();
            m.push(B, i, batch(20 + i)).unwrap();
        }
        assert_eq!(drain(&mut m), vec![10, 11, 20, 21, 12, 13, 22, 23]);
    }

    #[test]
    fn waits_for_the_ring_whose_turn_it_is() {
        let mut m = Merger::new(&[A, B], 1).unwrap();
        m.push(A, 0, batch(1)).unwrap();
        m.push(A, 1, batch(2)).unwrap();
        assert_eq!(drain(&mut m), vec![1]);
        m.push(B, 0, batch(3)).unwrap();
        assert_eq!(drain(&mut m), vec![3, 2]);
    }

    #[test]
    fn a_skip_of_n_counts_as_n_instances() {
        let mut m = Merger::new(&[A, B], 1).unwrap();
        m.push(B, 0, Value::Skip(3)).unwrap();
        for i in 0..5 {
            m.push(A, i, batch(i)).unwrap();
        }
        // B's skip fills B's positions 0..3, so A's positions 0..=3 pass;
        // A's position 4 comes after B's position 3, which is not decided yet.
        assert_eq!(drain(&mut m), vec![0, 1, 2, 3]);
        m.push(B, 1, batch(99)).unwrap();
        assert_eq!(drain(&mut m), vec![99, 4]);
    }

    #[test]
    fn a_batch_spanning_n_is_a_batch_then_a_skip_of_n_minus_one() {
        let spanning = |tag, span| match batch(tag) {
            Value::Batch(b) => Value::Batch(b.spanning(span)),
            skip => skip,
        };
        for m in 1..=3 {
            let mut spans = Merger::new(&[A, B], m).unwrap();
            let mut skips = Merger::new(&[A, B], m).unwrap();
            spans.push(A, 0, spanning(1, 3)).unwrap();
            spans.push(A, 1, batch(2)).unwrap();
            skips.push(A, 0, batch(1)).unwrap();
            skips.push(A, 1, Value::Skip(2)).unwrap();
            skips.push(A, 2, batch(2)).unwrap();
            for (i, tag) in (10..16).enumerate() {
                spans.push(B, i as u64, batch(tag)).unwrap();
                skips.push(B, i as u64, batch(tag)).unwrap();
            }
            let merged = drain(&mut spans);
            assert_eq!(merged, drain(&mut skips), "M = {m}");
            if m == 1 {
                assert_eq!(merged, vec![1, 10, 11, 12, 2, 13]);
            }
        }
    }

    #[test]
    fn huge_skips_on_every_ring_are_consumed_at_once() {
        let mut m = Merger::new(&[A, B], 1).unwrap();
        m.push(A, 0, Value::Skip(u64::MAX / 2)).unwrap();
        m.push(B, 0, Value::Skip(u64::MAX / 2)).unwrap();
        assert_eq!(m.poll(), None);
        assert!(m.credit.iter().all(|&c| c <= 1));
    }

    #[test]
    fn same_feeds_in_any_timing_give_the_same_merge() {
        let feeds: Vec<(RingId, Instance, Value)> = vec![
            (A, 0, batch(1)),
            (A, 1, Value::Skip(2)),
            (A, 2, batch(2)),
            (B, 0, batch(3)),
            (B, 1, batch(4)),
            (B, 2, batch(5)),
            (B, 3, Value::Skip(1)),
        ];
        let mut reference = Merger::new(&[A, B], 1).unwrap();
        for (r, i, v) in feeds.clone() {
            reference.push(r, i, v).unwrap();
        }
        let expected = drain(&mut reference);
        // Interleave the two rings' feeds differently and poll in between.
        let (a, b): (Vec<_>, Vec<_>) = feeds.into_iter().partition(|(r, _, _)| *r == A);
        let mut m = Merger::new(&[A, B], 1).unwrap();
        let mut got = Vec::new();
        for (r, i, v) in b.into_iter().chain(a) {
            m.push(r, i, v).unwrap();
            got.extend(drain(&mut m));
        }
        assert_eq!(got, expected);
        assert_eq!(expected, vec![1, 3, 4, 5, 2]);
    }

    #[test]
    fn bad_construction_and_unknown_rings_are_errors() {
        assert_eq!(Merger::new(&[], 1).unwrap_err(), MergeError::NoRings);
        assert_eq!(Merger::new(&[A], 0).unwrap_err(), MergeError::ZeroM);
        let mut m = Merger::new(&[A], 1).unwrap();
        assert_eq!(
            m.push(B, 0, Value::Skip(1)),
            Err(MergeError::UnknownRing { ring: B })
        );
    }

    /// A merger resumed from a cut taken after any batch, fed the rest of
    /// every ring from the cut, merges what the original merges after it:
    /// random batches, skips and spans on three rings, M of 1 to 3, with
    /// the feeds interleaved at random. The seed is in every message.
    #[test]
    fn a_resumed_merge_goes_on_as_the_original() {
        use rand::{RngExt, SeedableRng};
        use rand_chacha::ChaCha8Rng;
        const C: RingId = RingId(3);
        for seed in 0..200u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let m = rng.random_range(1..=3);
            let mut feeds: Vec<(RingId, Instance, Value)> = Vec::new();
            let mut tag = 0;
            for ring in [A, B, C] {
                for i in 0..rng.random_range(5..30) {
                    let value = match rng.random_range(0..4) {
                        0 => Value::Skip(rng.random_range(1..5)),
                        1 => match batch(tag) {
                            Value::Batch(b) => Value::Batch(b.spanning(rng.random_range(2..4))),
                            skip => skip,
                        },
                        _ => batch(tag),
                    };
                    tag += 1;
                    feeds.push((ring, i, value));
                }
            }
            // Interleave the rings at random, each in its own order.
            let mut rest: Vec<VecDeque<_>> = [A, B, C]
                .iter()
                .map(|ring| feeds.iter().filter(|f| f.0 == *ring).cloned().collect())
                .collect();
            let mut order = Vec::new();
            while rest.iter().any(|q| !q.is_empty()) {
                let q = rng.random_range(0..rest.len());
                order.extend(rest[q].pop_front());
            }
            let mut original = Merger::new(&[A, B, C], m).unwrap();
            let mut merged = Vec::new();
            let mut cuts = vec![(0, original.cut())];
            let mut pushed = 0;
            while pushed < order.len() || original.queued() > 0 {
                if let Some(b) = original.poll() {
                    merged.push(b.commands[0].id.proposer.0);
                    cuts.push((merged.len(), original.cut()));
                    continue;
                }
                if pushed == order.len() {
                    break;
                }
                let (r, i, v) = order[pushed].clone();
                original.push(r, i, v).unwrap();
                pushed += 1;
            }
            for (done, cut) in cuts {
                let mut resumed = Merger::resume(&cut, m).unwrap();
                for (r, i, v) in &feeds {
                    let at = cut.rings.iter().position(|x| x == r).unwrap();
                    if *i >= cut.next[at] {
                        resumed.push(*r, *i, v.clone()).unwrap();
                    }
                }
                assert_eq!(
                    drain(&mut resumed),
                    merged[done..],
                    "seed {seed} cut after {done}"
                );
            }
        }
    }

    #[test]
    fn a_cut_of_another_merge_is_refused() {
        let cut = Merger::new(&[A, B], 1).unwrap().cut();
        assert!(Merger::resume(&cut, 1).is_ok());
        let mut other = cut.clone();
        other.next.pop();
        assert!(matches!(
            Merger::resume(&other, 1),
            Err(MergeError::BadCut(_))
        ));
        let mut other = cut;
        other.rings.reverse();
        assert!(matches!(
            Merger::resume(&other, 1),
            Err(MergeError::BadCut(_))
        ));
    }
}
