//! Identifiers and values shared by every role of the protocol.
//!
//! A *command* is what a proposer multicasts: opaque bytes plus an identity
//! `(proposer, seq)` that lets learners deliver it at most once per ring even
//! when the proposer had to send it again. An *instance* of a ring decides a
//! [`Value`]: a batch of commands, or a skip of `n` instances that the merge
//! counts as `n` (DESIGN.md section 1).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// A process of the cluster: an acceptor, a learner, or a proposer endpoint.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct NodeId(pub u32);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "n{}", self.0)
    }
}

/// A multicast group, ordered by its own ring of acceptors.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct RingId(pub u16);

impl fmt::Display for RingId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "r{}", self.0)
    }
}

/// The index of one consensus decision in a ring. The first instance is 0.
pub type Instance = u64;

/// A Paxos ballot. Ordered by round, then by the node that owns it, so two
/// coordinators never use the same ballot. The default is [`Ballot::ZERO`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
pub struct Ballot {
    /// Incremented by a node that takes over as coordinator.
    pub round: u64,
    /// The coordinator that owns this ballot.
    pub node: NodeId,
}

impl Ballot {
    /// The ballot every acceptor has promised before hearing from anyone.
    pub const ZERO: Ballot = Ballot {
        round: 0,
        node: NodeId(0),
    };

    /// The smallest ballot of `node` that is higher than `self`, if any (a
    /// peer can exhaust the ballot space only by sending a round of `u64::MAX`).
    pub fn next_for(self, node: NodeId) -> Option<Ballot> {
        let round = if node > self.node {
            self.round.max(1)
        } else {
            self.round.checked_add(1)?
        };
        Some(Ballot { round, node })
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.round, self.node.0)
    }
}

/// The identity of a proposer (a client process). Chosen by the proposer; it
/// must be unique among the proposers of a cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct ProposerId(pub u64);

/// The identity of one command: its proposer and the proposer's sequence number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct CommandId {
    /// Who proposed it.
    pub proposer: ProposerId,
    /// Increasing per proposer, starting at 0.
    pub seq: u64,
}

/// A multicast command as it travels through a ring.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Identity, used by learners to deliver each command at most once per ring.
    pub id: CommandId,
    /// The proposer's low-water mark: every command of this proposer with a
    /// lower `seq` was delivered or abandoned, so learners may forget them.
    pub low_water: u64,
    /// The application's bytes.
    pub payload: Bytes,
}

/// What one instance decides.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Value {
    /// A batch of commands; counts as one instance in the merge.
    Batch(Arc<[Command]>),
    /// `n` instances with nothing in them, decided as one (rate leveling and
    /// hole filling). Counts as `n` instances in the merge.
    Skip(u64),
}

impl Value {
    /// How many merge positions this value occupies (DESIGN.md section 1:
    /// a skip of n counts as n instances).
    pub fn positions(&self) -> u64 {
        match self {
            Value::Batch(_) => 1,
            Value::Skip(n) => *n,
        }
    }

    /// The commands of a batch; empty for a skip.
    pub fn commands(&self) -> &[Command] {
        match self {
            Value::Batch(cmds) => cmds,
            Value::Skip(_) => &[],
        }
    }

    /// Equality that first compares batch pointers: a value handed from node
    /// to node in memory is the same allocation.
    pub fn same_as(&self, other: &Value) -> bool {
        match (self, other) {
            (Value::Batch(a), Value::Batch(b)) => Arc::ptr_eq(a, b) || a == b,
            _ => self == other,
        }
    }

    /// Payload bytes carried, for batching limits.
    pub fn payload_bytes(&self) -> usize {
        self.commands().iter().map(|c| c.payload.len()).sum()
    }
}

/// A set of acceptors that voted, as a bitmask over positions in the ring order.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VoteSet(pub u64);

impl VoteSet {
    /// Adds the acceptor at `position` in the ring order.
    pub fn insert(&mut self, position: usize) {
        debug_assert!(position < 64);
        self.0 |= 1 << position;
    }

    /// Whether the acceptor at `position` voted.
    pub fn contains(self, position: usize) -> bool {
        position < 64 && self.0 & (1 << position) != 0
    }

    /// Number of votes among the first `members` positions (bits beyond the
    /// ring size, which only a faulty peer would set, are not counted).
    pub fn count(self, members: usize) -> usize {
        let mask = if members >= 64 {
            u64::MAX
        } else {
            (1u64 << members) - 1
        };
        (self.0 & mask).count_ones() as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ballots_order_by_round_then_node() {
        let a = Ballot {
            round: 1,
            node: NodeId(3),
        };
        let b = Ballot {
            round: 2,
            node: NodeId(1),
        };
        assert!(a < b);
        assert!(Ballot::ZERO < a);
        let next = a.next_for(NodeId(2)).unwrap();
        assert!(next > a);
        assert_eq!(next.node, NodeId(2));
        let same_round = Ballot {
            round: 1,
            node: NodeId(4),
        };
        assert_eq!(a.next_for(NodeId(4)), Some(same_round));
    }

    #[test]
    fn an_exhausted_ballot_space_has_no_next_ballot() {
        let top = Ballot {
            round: u64::MAX,
            node: NodeId(9),
        };
        assert_eq!(top.next_for(NodeId(1)), None);
        assert!(top.next_for(NodeId(10)).is_some_and(|b| b > top));
    }

    #[test]
    fn vote_set_counts_only_ring_members() {
        let mut v = VoteSet::default();
        v.insert(0);
        v.insert(2);
        assert_eq!(v.count(3), 2);
        assert!(v.contains(2) && !v.contains(1));
        assert_eq!(VoteSet(u64::MAX).count(3), 3);
        assert!(!VoteSet(u64::MAX).contains(64));
    }

    #[test]
    fn skip_counts_its_positions() {
        assert_eq!(Value::Skip(7).positions(), 7);
        assert_eq!(Value::Batch(Arc::from(Vec::new())).positions(), 1);
    }
}
