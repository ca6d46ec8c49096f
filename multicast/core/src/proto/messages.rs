//! The messages of Multi-Ring Paxos (docs/ARCHITECTURE.md, "The atomic multicast").
//!
//! ```text
//! proposer --Propose--> any acceptor --(forward)--> coordinator of the ring
//! coordinator --Prepare--> acceptors --Promise/Nack--> coordinator        (Phase 1, once per term)
//! coordinator --Accept--> successor --Accept(+vote)--> ... --> decider     (Phase 2 along the ring)
//! coordinator --Durable--> acceptors           (its early votes are on disk: durable storage only)
//! decider --Decide--> learners;  decider --Chosen--> coordinator (it holds the value)
//! decider --Decide(relay)--> other acceptors
//! learner/acceptor --LearnRequest--> acceptor --Decide | Trimmed--> requester   (gap recovery)
//! acceptor --Heartbeat--> acceptors            (failure detection, who leads, where rings stand)
//! replica --Checkpointed--> acceptors          (what its durable checkpoint holds: trimming)
//! ```
//!
//! Every message names its ring, except heartbeats, which are per node.

use serde::{Deserialize, Serialize};

use super::types::{Ballot, Command, Instance, NodeId, RingId, Value, VoteSet};

/// One protocol message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// Commands for a ring, from a proposer or forwarded by an acceptor.
    Propose(Propose),
    /// Phase 1a.
    Prepare(Prepare),
    /// Phase 1b, positive.
    Promise(Promise),
    /// A refusal: the sender has promised a higher ballot.
    Nack(Nack),
    /// Phase 2, travelling along the ring and collecting votes.
    Accept(Accept),
    /// A decided instance.
    Decide(Decide),
    /// A request for decided instances, by a learner or an acceptor with a gap.
    LearnRequest(LearnRequest),
    /// The answer to a [`LearnRequest`] for instances the acceptor no longer keeps.
    Trimmed(Trimmed),
    /// Liveness signal between acceptors, with what the sender hears and leads.
    Heartbeat(Heartbeat),
    /// A replica's durable checkpoint reaches this far on a ring.
    Checkpointed(Checkpointed),
    /// A decision without its value, for an acceptor that voted for it.
    Chosen(Chosen),
    /// The coordinator's votes that left before its disk had them are durable now.
    Durable(Durable),
}

impl Message {
    /// The ring a message is about, if any.
    pub fn ring(&self) -> Option<RingId> {
        match self {
            Message::Propose(m) => Some(m.ring),
            Message::Prepare(m) => Some(m.ring),
            Message::Promise(m) => Some(m.ring),
            Message::Nack(m) => Some(m.ring),
            Message::Accept(m) => Some(m.ring),
            Message::Decide(m) => Some(m.ring),
            Message::LearnRequest(m) => Some(m.ring),
            Message::Trimmed(m) => Some(m.ring),
            Message::Heartbeat(_) => None,
            Message::Checkpointed(m) => Some(m.ring),
            Message::Chosen(m) => Some(m.ring),
            Message::Durable(m) => Some(m.ring),
        }
    }
}

/// Commands proposed for a ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Propose {
    /// Destination ring.
    pub ring: RingId,
    /// The commands, in the proposer's order.
    pub commands: Vec<Command>,
    /// Set by an acceptor that forwards the proposal to the coordinator it
    /// believes in; a forwarded proposal is not forwarded again.
    pub forwarded: bool,
}

/// Phase 1a: "promise `ballot` for every instance from `from` on".
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prepare {
    /// Ring.
    pub ring: RingId,
    /// The new coordinator's ballot.
    pub ballot: Ballot,
    /// The first instance the coordinator does not know to be decided.
    pub from: Instance,
}

/// Phase 1b: the acceptor promised `ballot` and reports what it accepted.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Promise {
    /// Ring.
    pub ring: RingId,
    /// The ballot promised.
    pub ballot: Ballot,
    /// Every instance below this is decided (known to the acceptor, or trimmed).
    pub frontier: Instance,
    /// The merge position of `frontier`: the positions of every instance below it.
    pub frontier_position: u64,
    /// What the acceptor holds at or above `max(from, frontier)`.
    pub slots: Vec<PromisedSlot>,
}

/// One instance reported in a [`Promise`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PromisedSlot {
    /// Instance.
    pub instance: Instance,
    /// Ballot at which the value was accepted.
    pub ballot: Ballot,
    /// The accepted (or decided) value.
    pub value: Value,
    /// Whether the acceptor knows this value to be decided.
    pub decided: bool,
}

/// A refusal of a Prepare or Accept with a lower ballot than promised.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Nack {
    /// Ring.
    pub ring: RingId,
    /// The ballot the sender has promised.
    pub promised: Ballot,
}

/// Phase 2: sent by the coordinator to itself, then along the ring; each
/// acceptor records it, adds its vote, and forwards it, until `f + 1` votes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Accept {
    /// Ring.
    pub ring: RingId,
    /// Instance.
    pub instance: Instance,
    /// The coordinator's ballot.
    pub ballot: Ballot,
    /// The proposed value.
    pub value: Value,
    /// Acceptors (positions in ring order) that voted so far.
    pub votes: VoteSet,
    /// The coordinator's vote in `votes` left before its record was durable
    /// (durable storage overlaps the coordinator's write with its
    /// successor's): it counts towards the quorum only once a [`Durable`]
    /// from the coordinator covers this instance at this ballot.
    pub coordinator_pending: bool,
    /// Every instance below this is decided, as far as the coordinator knows;
    /// acceptors that accepted one of them in `ballot` may mark it decided.
    pub decided_below: Instance,
}

/// A decided instance.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Decide {
    /// Ring.
    pub ring: RingId,
    /// Instance.
    pub instance: Instance,
    /// The ballot of the decision; its node is the coordinator, where the
    /// relay around the ring stops.
    pub ballot: Ballot,
    /// The decided value.
    pub value: Value,
    /// Whether this copy travels around the ring (each acceptor passes it
    /// to the next one but the coordinator, which the decider told directly)
    /// or is a direct answer.
    pub relay: bool,
    /// Relay hops so far; a relay stops once it has visited the `n - 2`
    /// acceptors that are neither the decider nor the coordinator.
    pub hops: u8,
}

/// "Instance `instance` is decided, at `ballot`": what the decider tells
/// the coordinator in place of a [`Decide`]. The coordinator's own acceptor
/// votes first, before the Accept travels on, so it holds the value; one
/// ballot proposes one value per instance, so the value it accepted at
/// `ballot` is the one decided, and the batch need not travel back to it.
/// An acceptor that no longer holds it at `ballot` learns it as any gap.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chosen {
    /// Ring.
    pub ring: RingId,
    /// Instance.
    pub instance: Instance,
    /// The ballot of the decision.
    pub ballot: Ballot,
}

/// "My votes at `ballot` for the instances in `ranges`, sent along the ring
/// before they were on my disk, are durable now": the coordinator to the
/// ring's other acceptors, after the sync that covered them. Only these
/// votes count as the coordinator's in a quorum (see
/// [`Accept::coordinator_pending`]), so a decision never rests on a vote a
/// crash can take back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// Ring.
    pub ring: RingId,
    /// The coordinator's ballot.
    pub ballot: Ballot,
    /// Half-open instance ranges `[start, end)`, ascending and disjoint.
    pub ranges: Vec<(Instance, Instance)>,
}

/// "Send me the decided instances in `[from, to)`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct LearnRequest {
    /// Ring.
    pub ring: RingId,
    /// First instance wanted.
    pub from: Instance,
    /// One past the last instance wanted.
    pub to: Instance,
}

/// "My newest durable checkpoint holds everything below `below`": a
/// replica to the ring's acceptors, which may trim below what enough
/// replicas have reported (`Params::trim_replicas`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Checkpointed {
    /// Ring.
    pub ring: RingId,
    /// The first instance the checkpoint does not hold.
    pub below: Instance,
}

/// "I no longer keep instances below `below`."
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Trimmed {
    /// Ring.
    pub ring: RingId,
    /// Every instance below this was decided and discarded.
    pub below: Instance,
    /// The merge position of `below`.
    pub position: u64,
}

/// Sent by every acceptor to its peers every `heartbeat_interval`.
///
/// Besides being a sign of life it says which peers the sender hears, so
/// that a peer that cannot hear a node treats it as failed although its
/// messages arrive (one-way loss), and, per ring, whether the sender leads
/// it: a node follows the leader it hears announce the highest ballot, and
/// refuses to promise to anybody else while that leader is alive.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heartbeat {
    /// The acceptors the sender has heard from within its suspect timeout.
    pub hears: Vec<NodeId>,
    /// One entry per ring the sender is an acceptor of.
    pub rings: Vec<RingBeat>,
}

/// What a [`Heartbeat`] says about one ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RingBeat {
    /// Ring.
    pub ring: RingId,
    /// The ballot at which the sender leads the ring (Phase 1 done), if it does.
    pub leading: Option<Ballot>,
    /// Every instance below this is decided, as far as the sender knows.
    pub frontier: Instance,
    /// The merge position just past the last batch below the sender's
    /// frontier: rings merged with this one must reach it (rate leveling
    /// takes it from here when this node's own acceptor lags).
    pub content_position: u64,
    /// The sender restarted without its accepted values and abstains from
    /// Phase 1 until it knows every instance below this to be decided.
    pub amnesiac_until: Option<Instance>,
}

/// A message and its destination, produced by a protocol role for its driver to send.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Transmit {
    /// Destination.
    pub to: NodeId,
    /// What to send.
    pub message: Message,
}
