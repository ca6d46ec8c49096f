//! One fsync of latency under durable storage: the coordinator's write
//! overlaps its successor's (docs/ARCHITECTURE.md, "The atomic multicast").
//!
//! ```text
//! coordinator: vote (append) ──Accept, coordinator_pending──> successor   before its sync
//!              sync ──Durable{ballot, ranges}──> the ring's other acceptors
//! decider:     counts the coordinator's vote once a Durable covers it
//! ```
//!
//! The coordinator's acceptor votes for its own proposal as every acceptor
//! does, but under durable storage the Accept carrying that vote leaves
//! before the vote's record is on disk, so that the coordinator's fsync and
//! its successor's run at the same time. Such a vote is *pending*: a decider
//! counts it only once the coordinator has said, after its sync, that it is
//! durable ([`super::messages::Durable`]). Every vote a decision counts is
//! therefore durable, as in plain Paxos; a coordinator that crashes before
//! its sync has sent nothing a quorum rests on.
//!
//! The coordinator sends early only at a ballot whose promise is already
//! durable: a restarted node that lost the promise could otherwise pick the
//! same ballot again and propose another value under it.
//!
//! Memory storage keeps no votes across a crash (its votes count as cast
//! when sent, and a restarted acceptor abstains instead), so it has no use
//! for any of this: [`Overlap::new`] is off for it.

use std::collections::BTreeMap;

use super::types::{Ballot, Instance};

/// How many ranges a decider keeps per ring (the oldest go first; an
/// instance whose range was dropped waits for the coordinator's retry).
const MAX_NOTICED: usize = 4096;

/// The state of one ring at one acceptor, on both sides: as the
/// coordinator's acceptor (votes sent early, their durability) and as a
/// decider (what coordinators said is durable, votes waiting for that).
#[derive(Debug, Default)]
pub(crate) struct Overlap {
    /// Whether this node's storage keeps votes (durable storage).
    enabled: bool,
    /// The highest promise known to be on disk.
    durable_promise: Ballot,
    /// The promise as of the last records handed to the driver.
    taken_promise: Ballot,
    /// Early votes whose records the driver does not have yet.
    appended: Vec<(Ballot, Instance)>,
    /// Early votes whose records the driver has, not yet synced.
    taken: Vec<(Ballot, Instance)>,
    /// Decider side: ranges `start -> end` that the coordinator of
    /// `noticed_ballot` said are durable.
    noticed: BTreeMap<Instance, Instance>,
    noticed_ballot: Ballot,
    /// Decider side: instances with a quorum of votes if the coordinator's
    /// pending one counts, at that ballot.
    awaiting: BTreeMap<Instance, Ballot>,
}

impl Overlap {
    /// For an acceptor whose storage keeps votes (`enabled`) and which
    /// recovered `promised` from it.
    pub(crate) fn new(enabled: bool, promised: Ballot) -> Overlap {
        Overlap {
            enabled,
            durable_promise: promised,
            taken_promise: promised,
            ..Overlap::default()
        }
    }

    /// Whether the coordinator's acceptor may pass on its vote at `ballot`
    /// before the vote is durable.
    pub(crate) fn may_send_early(&self, ballot: Ballot) -> bool {
        self.enabled && self.durable_promise >= ballot
    }

    /// A vote for `instance` at `ballot` left before its record was durable.
    pub(crate) fn sent_early(&mut self, ballot: Ballot, instance: Instance) {
        self.appended.push((ballot, instance));
    }

    /// The driver took every record appended so far; `promised` is the
    /// promise they hold.
    pub(crate) fn taken(&mut self, promised: Ballot) {
        self.taken.append(&mut self.appended);
        self.taken_promise = promised;
    }

    /// The driver synced every record it took: the early votes among them,
    /// per ballot as ascending ranges, for the ring's other acceptors.
    pub(crate) fn synced(&mut self) -> Vec<(Ballot, Vec<(Instance, Instance)>)> {
        self.durable_promise = self.durable_promise.max(self.taken_promise);
        let mut votes = std::mem::take(&mut self.taken);
        votes.sort_unstable();
        votes.dedup();
        let mut notices: Vec<(Ballot, Vec<(Instance, Instance)>)> = Vec::new();
        for (ballot, instance) in votes {
            match notices.last_mut() {
                Some((b, ranges)) if *b == ballot => match ranges.last_mut() {
                    Some((_, end)) if *end == instance => *end = instance + 1,
                    _ => ranges.push((instance, instance + 1)),
                },
                _ => notices.push((ballot, vec![(instance, instance + 1)])),
            }
        }
        notices
    }

    /// Whether the coordinator of `ballot` said its vote for `instance` is durable.
    pub(crate) fn covers(&self, ballot: Ballot, instance: Instance) -> bool {
        ballot == self.noticed_ballot
            && self
                .noticed
                .range(..=instance)
                .next_back()
                .is_some_and(|(_, &end)| instance < end)
    }

    /// A vote at `ballot` for `instance` waits for the coordinator's to be durable.
    pub(crate) fn wait(&mut self, ballot: Ballot, instance: Instance) {
        self.awaiting.insert(instance, ballot);
    }

    /// The coordinator of `ballot` says its votes in `ranges` are durable;
    /// returns the waiting instances they complete. A notice of an older
    /// ballot than one heard is stale and ignored.
    pub(crate) fn noticed(
        &mut self,
        ballot: Ballot,
        ranges: &[(Instance, Instance)],
    ) -> Vec<Instance> {
        if ballot < self.noticed_ballot {
            return Vec::new();
        }
        if ballot > self.noticed_ballot {
            self.noticed.clear();
            self.noticed_ballot = ballot;
        }
        for &(start, end) in ranges.iter().filter(|(s, e)| s < e) {
            let kept = self.noticed.entry(start).or_insert(end);
            *kept = (*kept).max(end);
        }
        while self.noticed.len() > MAX_NOTICED {
            self.noticed.pop_first();
        }
        let ready: Vec<Instance> = self
            .awaiting
            .iter()
            .filter(|&(&i, &b)| self.covers(b, i))
            .map(|(&i, _)| i)
            .collect();
        for i in &ready {
            self.awaiting.remove(i);
        }
        ready
    }

    /// `instance` is decided: nothing waits for it any more.
    pub(crate) fn decided(&mut self, instance: Instance) {
        self.awaiting.remove(&instance);
    }

    /// Everything below `frontier` is decided: forget what concerns it.
    pub(crate) fn forget_below(&mut self, frontier: Instance) {
        self.awaiting = self.awaiting.split_off(&frontier);
        while self
            .noticed
            .first_key_value()
            .is_some_and(|(_, &end)| end <= frontier)
        {
            self.noticed.pop_first();
        }
    }

    /// Instances waiting for a coordinator's notice.
    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.awaiting.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::NodeId;

    fn b(round: u64) -> Ballot {
        Ballot {
            round,
            node: NodeId(1),
        }
    }

    #[test]
    fn early_only_at_a_durable_promise_and_only_with_durable_storage() {
        let mut o = Overlap::new(true, b(1));
        assert!(o.may_send_early(b(1)));
        assert!(!o.may_send_early(b(2)), "promise of 2 not on disk yet");
        o.taken(b(2));
        assert!(!o.may_send_early(b(2)), "taken is not synced");
        o.synced();
        assert!(o.may_send_early(b(2)));
        assert!(!Overlap::new(false, b(5)).may_send_early(b(1)));
    }

    #[test]
    fn a_sync_covers_what_was_taken_before_it_not_what_came_after() {
        let mut o = Overlap::new(true, b(1));
        for i in [3, 4, 5, 9] {
            o.sent_early(b(1), i);
        }
        o.taken(b(1));
        o.sent_early(b(1), 6); // appended after the driver took the records
        assert_eq!(o.synced(), vec![(b(1), vec![(3, 6), (9, 10)])]);
        assert_eq!(o.synced(), vec![], "nothing taken since");
        o.taken(b(1));
        assert_eq!(o.synced(), vec![(b(1), vec![(6, 7)])]);
    }

    #[test]
    fn a_decider_counts_a_pending_vote_only_inside_a_notice_of_its_ballot() {
        let mut o = Overlap::new(true, Ballot::ZERO);
        o.wait(b(2), 10);
        o.wait(b(2), 12);
        o.wait(b(1), 11);
        assert_eq!(o.noticed(b(2), &[(9, 11)]), vec![10]);
        assert!(o.covers(b(2), 9) && !o.covers(b(2), 11) && !o.covers(b(1), 10));
        assert_eq!(o.noticed(b(1), &[(0, 20)]), Vec::<Instance>::new(), "stale");
        assert_eq!(o.noticed(b(2), &[(12, 13)]), vec![12]);
        assert_eq!(o.noticed(b(3), &[(11, 12)]), vec![], "11 waits at ballot 1");
        assert!(!o.covers(b(2), 10), "a higher ballot's notice replaces");
        o.forget_below(12);
        assert!(!o.covers(b(3), 11));
        assert_eq!(o.waiting(), 0);
    }
}
