//! At-most-once delivery per ring (DESIGN.md section 4, integrity).
//!
//! A proposer may send a command again when it hears nothing, and both copies
//! can be decided (for instance, one re-proposed by a new coordinator from an
//! acceptor's report, the other proposed afresh). Each ring's learners filter
//! the decided sequence with the same deterministic rule, so all of them
//! deliver the same commands: per proposer, a command is delivered if its
//! `seq` is at or above the proposer's low-water mark and was not delivered
//! before. Proposers idle for `dedupe_horizon` instances are forgotten.

use std::collections::{BTreeSet, HashMap};

use super::types::{Command, Instance, ProposerId};

#[derive(Debug, Default)]
struct ProposerState {
    low_water: u64,
    delivered: BTreeSet<u64>,
    last_instance: Instance,
}

/// The filter of one ring at one learner.
#[derive(Debug)]
pub(crate) struct Dedupe {
    proposers: HashMap<ProposerId, ProposerState>,
    horizon: u64,
    next_sweep: Instance,
}

impl Dedupe {
    pub(crate) fn new(horizon: u64) -> Self {
        Dedupe {
            proposers: HashMap::new(),
            horizon,
            next_sweep: horizon,
        }
    }

    /// Whether `command`, decided in `instance`, is delivered.
    pub(crate) fn admit(&mut self, instance: Instance, command: &Command) -> bool {
        let state = self.proposers.entry(command.id.proposer).or_default();
        state.last_instance = instance;
        if command.low_water > state.low_water {
            state.low_water = command.low_water;
            state.delivered = state.delivered.split_off(&command.low_water);
        }
        command.id.seq >= state.low_water && state.delivered.insert(command.id.seq)
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
