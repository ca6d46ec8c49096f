//! Counters kept by the protocol roles. Every input that is ignored or
//! refused is counted here, so that bad input is visible without a panic.

/// Counters of an acceptor node (all its rings together).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct NodeMetrics {
    /// Instances this node decided (it cast the `f+1`-th vote).
    pub decided: u64,
    /// Commands received in proposals.
    pub commands_received: u64,
    /// Commands dropped: the queue was full, or no coordinator was known.
    pub commands_dropped: u64,
    /// Commands forwarded to the coordinator this node believes in.
    pub commands_forwarded: u64,
    /// Phase 1 runs started by this node.
    pub elections: u64,
    /// Messages about a ring this node does not serve.
    pub unknown_ring: u64,
    /// Messages that only an acceptor of the ring may send, from someone else.
    pub unknown_peer: u64,
    /// Prepares and Accepts below the promised ballot (answered with a Nack).
    pub stale_ballot: u64,
    /// Messages about instances already known to be decided.
    pub duplicates: u64,
    /// Accepts for instances too far beyond what this node knows to be decided.
    pub beyond_window: u64,
    /// Prepares not answered because this node may have forgotten votes.
    pub amnesiac_abstentions: u64,
    /// Value-less decisions ([`super::Chosen`]) for a vote this node no
    /// longer holds at that ballot (left to gap recovery).
    pub chosen_unknown: u64,
    /// Accepts this node passed on as coordinator before its vote was
    /// durable (durable storage: its write overlaps its successor's).
    pub early_accepts: u64,
    /// Decisions this node made when the coordinator's notice that its
    /// early vote is durable arrived after this node's own vote.
    pub durable_waits: u64,
    /// Decisions that contradict one this node already knew (must stay 0).
    pub conflicting_decisions: u64,
    /// Learn requests answered.
    pub learn_requests: u64,
    /// Frames that could not be decoded.
    pub bad_frames: u64,
    /// Terms not started because a peer announced the highest possible ballot.
    pub ballots_exhausted: u64,
    /// Prepares refused because this node hears a live leader other than the candidate.
    pub prepares_refused: u64,
    /// Client frames refused: not a proposal, a command under the id of
    /// another certificate, or a checkpoint marker.
    pub refused_proposals: u64,
    /// Terms this node ended while leading (a higher ballot, another leader, no quorum heard).
    pub step_downs: u64,
    /// What this node proposed as coordinator, per ring.
    pub rings: std::collections::BTreeMap<super::RingId, RingCounters>,
}

/// What a coordinator proposed in one ring (over all its terms).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct RingCounters {
    /// Batches proposed.
    pub batches: u64,
    /// Commands in them (`commands / batches` is the mean batch size).
    pub commands: u64,
    /// Instances proposed as skips (rate leveling, hole filling).
    pub skipped: u64,
}

/// Counters of a learner.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct LearnerMetrics {
    /// Instances delivered, over all rings.
    pub delivered_instances: u64,
    /// Commands delivered, over all rings.
    pub delivered_commands: u64,
    /// Instances delivered that were skips (rate leveling, Phase-1 holes), over all rings.
    pub delivered_skips: u64,
    /// Commands decided again (a proposer's retry) and not delivered twice.
    pub duplicate_commands: u64,
    /// Decisions for instances already delivered or buffered.
    pub duplicate_decisions: u64,
    /// Decisions dropped because they were too far ahead of the next instance.
    pub beyond_buffer: u64,
    /// Messages about rings this learner does not subscribe to.
    pub unknown_ring: u64,
    /// Messages from a node that is not an acceptor of the ring.
    pub unknown_peer: u64,
    /// Learn requests sent to recover gaps.
    pub recovery_requests: u64,
    /// Frames that could not be decoded, and decisions whose batch could not.
    pub bad_frames: u64,
}
