//! At-most-once delivery per ring (docs/ARCHITECTURE.md, "The atomic multicast", integrity).
//!
//! A proposer may send a command again when it hears nothing, and both copies
//! can be decided (for instance, one re-proposed by a new coordinator from an
//! acceptor's report, the other proposed afresh). Each ring's learners filter
//! the decided sequence with the same deterministic rule, so all of them
//! deliver the same commands: per proposer, a command is delivered if its
//! `seq` is at or above the proposer's low-water mark and was not delivered
//! before. Proposers idle for `dedupe_horizon` instances are forgotten.
//!
//! Commands of a proposer mostly arrive in `seq` order, so the delivered set
//! is kept as "everything from the low-water mark up to `contiguous`" plus
//! the seqs delivered above it: those in a window of [`WINDOW`] seqs above
//! `contiguous` as flags, the rare ones beyond it in a set. On a ring that
//! carries only some of a proposer's commands (P-SMR's thread rings and
//! `g_all`) `contiguous` moves with the low-water mark only, so every command
//! lands above it: a flag in a `VecDeque` costs there what the contiguous
//! case costs, where a `BTreeSet` took 47 ns per command at a psmr replica
//! (8 ns in smr). A seq far ahead (a faulty proposer) goes to the set and
//! costs no window memory.

use std::collections::{BTreeSet, VecDeque};

use rustc_hash::FxHashMap;
use serde::{Deserialize, Serialize};

use super::types::{Command, Instance, ProposerId};

/// Seqs above `contiguous` tracked as flags.
const WINDOW: u64 = 1 << 16;

#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
struct ProposerState {
    /// Commands below this are not delivered (again).
    low_water: u64,
    /// Every seq in `[low_water, contiguous)` was delivered.
    contiguous: u64,
    /// Flag `i`: seq `contiguous + i` was delivered (flag 0 never is).
    window: VecDeque<bool>,
    /// Delivered seqs at or beyond `contiguous + WINDOW`.
    far: BTreeSet<u64>,
    last_instance: Instance,
}

impl ProposerState {
    fn raise_low_water(&mut self, low_water: u64) {
        if low_water <= self.low_water {
            return;
        }
        self.low_water = low_water;
        if low_water > self.contiguous {
            let passed = (low_water - self.contiguous).min(self.window.len() as u64);
            self.window.drain(..passed as usize);
            self.contiguous = low_water;
        }
        self.settle();
    }

    /// Moves `contiguous` over seqs delivered ahead of it, and seqs of
    /// `far` that came within the window into it.
    fn settle(&mut self) {
        loop {
            while self.window.front() == Some(&true) {
                self.window.pop_front();
                self.contiguous = self.contiguous.saturating_add(1);
            }
            let mut moved = false;
            while let Some(&seq) = self.far.first() {
                if seq >= self.contiguous.saturating_add(WINDOW) {
                    break;
                }
                self.far.pop_first();
                if seq >= self.contiguous {
                    self.flag(seq - self.contiguous);
                    moved = true;
                }
            }
            if !moved {
                return;
            }
        }
    }

    fn flag(&mut self, offset: u64) {
        debug_assert!(offset < WINDOW);
        let at = offset as usize;
        if self.window.len() <= at {
            self.window.resize(at + 1, false);
        }
        self.window[at] = true;
    }

    /// Marks `seq` delivered; false if it was (or may not be) delivered.
    fn admit(&mut self, seq: u64) -> bool {
        if seq < self.contiguous {
            return false;
        }
        let offset = seq - self.contiguous;
        if offset >= WINDOW {
            return self.far.insert(seq);
        }
        if self.window.get(offset as usize) == Some(&true) {
            return false;
        }
        self.flag(offset);
        self.settle();
        true
    }
}

/// The filter of one ring at one learner. Its state is a function of the
/// ring's decided sequence up to where it stands, so a replica checkpoint
/// carries it (`Learner::dedupe_image`) and a restored learner filters the
/// rest of the sequence as one that never stopped.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Dedupe {
    proposers: FxHashMap<ProposerId, ProposerState>,
    horizon: u64,
    next_sweep: Instance,
}

impl Dedupe {
    pub(crate) fn new(horizon: u64) -> Self {
        Dedupe {
            proposers: FxHashMap::default(),
            horizon,
            next_sweep: horizon,
        }
    }

    /// Whether `command`, decided in `instance`, is delivered.
    pub(crate) fn admit(&mut self, instance: Instance, command: &Command) -> bool {
        self.admit_id(instance, CommandKey::of(command))
    }

    /// [`Dedupe::admit`] by the fields it looks at.
    pub(crate) fn admit_id(&mut self, instance: Instance, key: CommandKey) -> bool {
        let state = self.proposers.entry(key.proposer).or_default();
        state.last_instance = instance;
        state.raise_low_water(key.low_water);
        state.admit(key.seq)
    }

    /// Sweeps as calling [`Dedupe::sweep`] for every instance of
    /// `[from, to)` in order would.
    pub(crate) fn sweep_range(&mut self, from: Instance, to: Instance) {
        let mut from = from;
        loop {
            let at = from.max(self.next_sweep);
            if at >= to {
                return;
            }
            self.sweep(at);
            from = at + 1;
        }
    }

    /// Forgets proposers not seen for a horizon; call once per instance.
    pub(crate) fn sweep(&mut self, instance: Instance) {
        if instance < self.next_sweep {
            return;
        }
        self.next_sweep = instance.saturating_add(self.horizon / 4 + 1);
        let horizon = self.horizon;
        self.proposers
            .retain(|_, s| s.last_instance.saturating_add(horizon) >= instance);
    }
}

/// What the filter looks at in a command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct CommandKey {
    proposer: ProposerId,
    seq: u64,
    low_water: u64,
}

impl CommandKey {
    pub(crate) fn of(command: &Command) -> CommandKey {
        CommandKey {
            proposer: command.id.proposer,
            seq: command.id.seq,
            low_water: command.low_water,
        }
    }
}

#[cfg(test)]
mod tests {
    use bytes::Bytes;

    use super::*;
    use crate::proto::types::CommandId;

    fn cmd(proposer: u64, seq: u64, low_water: u64) -> Command {
        Command {
            id: CommandId {
                proposer: ProposerId(proposer),
                seq,
            },
            low_water,
            payload: Bytes::new(),
        }
    }

    #[test]
    fn duplicates_and_commands_below_the_low_water_mark_are_dropped() {
        let mut d = Dedupe::new(1000);
        assert!(d.admit(1, &cmd(1, 0, 0)));
        assert!(d.admit(1, &cmd(1, 2, 0)));
        assert!(!d.admit(2, &cmd(1, 2, 0)), "retry of seq 2");
        assert!(d.admit(2, &cmd(2, 2, 0)), "another proposer");
        assert!(d.admit(3, &cmd(1, 5, 3)));
        assert!(
            !d.admit(4, &cmd(1, 1, 0)),
            "seq 1 is below the low-water mark 3"
        );
        assert!(!d.admit(4, &cmd(1, 5, 0)));
        assert!(d.admit(4, &cmd(1, 4, 0)));
        assert!(
            d.admit(4, &cmd(1, 3, 0)),
            "3 is at the low-water mark and new"
        );
        assert!(!d.admit(4, &cmd(1, 3, 0)));
    }

    #[test]
    fn out_of_order_seqs_are_each_delivered_once() {
        let mut d = Dedupe::new(1000);
        let order = [3, 1, 0, 2, 2, 7, 5, 4, 6, 0, 7];
        let admitted: Vec<bool> = order.iter().map(|&s| d.admit(1, &cmd(9, s, 0))).collect();
        assert_eq!(
            admitted,
            vec![
                true, true, true, true, false, true, true, true, true, false, false
            ]
        );
        let state = &d.proposers[&ProposerId(9)];
        assert_eq!(state.contiguous, 8);
        assert!(state.window.is_empty() && state.far.is_empty());
    }

    /// Against the set of every delivered seq, over random seqs near the
    /// low-water mark, beyond the window, repeated, and rising low-water
    /// marks; the seed is in every message.
    #[test]
    fn the_filter_admits_like_a_set_of_delivered_seqs() {
        use rand::{RngExt, SeedableRng};
        use rand_chacha::ChaCha8Rng;
        for seed in 0..64u64 {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let mut d = Dedupe::new(1 << 40);
            let (mut delivered, mut low) = (BTreeSet::new(), 0u64);
            for step in 0..2_000u64 {
                if rng.random_bool(0.05) {
                    low += rng.random_range(0..WINDOW / 4);
                }
                let seq = match rng.random_range(0..10) {
                    0 => low + WINDOW + rng.random_range(0..WINDOW),
                    1 => low.saturating_sub(rng.random_range(0..4)),
                    _ => low + rng.random_range(0..64),
                };
                let expected = seq >= low && delivered.insert(seq);
                let got = d.admit(step, &cmd(1, seq, low));
                assert_eq!(got, expected, "seed {seed} step {step} seq {seq} low {low}");
            }
        }
    }

    #[test]
    fn idle_proposers_are_forgotten_after_the_horizon() {
        let mut d = Dedupe::new(100);
        assert!(d.admit(1, &cmd(1, 0, 0)));
        d.sweep(50);
        assert!(!d.admit(50, &cmd(1, 0, 0)));
        d.sweep(120);
        assert_eq!(
            d.proposers.len(),
            1,
            "seen at 50, within the horizon at 120"
        );
        d.sweep(400);
        assert!(d.proposers.is_empty());
    }
}
