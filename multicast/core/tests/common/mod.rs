//! Fixtures shared by the exact-output tests of psmr-core's handlers: ring
//! r0 = [n1, n2, n3] with learner l, nodes started from nothing stored, and
//! what they hand their driver, heartbeats left out.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::time::Instant;

use bytes::Bytes;
use psmr_core::proto::{
    AcceptorNode, Ballot, Command, CommandId, Message, MulticastConfig, NodeId, Params, ProposerId,
    Ready, RingConfig, RingId, Transmit,
};
use psmr_core::storage::{Record, Recovered};

pub(crate) const R: RingId = RingId(0);
pub(crate) const N1: NodeId = NodeId(1);
pub(crate) const N2: NodeId = NodeId(2);
pub(crate) const N3: NodeId = NodeId(3);
pub(crate) const L: NodeId = NodeId(101);

/// Ring r0 of n1, n2, n3 (n1 coordinates first), learned by l.
pub(crate) fn ring(params: Params) -> MulticastConfig {
    MulticastConfig {
        rings: vec![RingConfig {
            id: R,
            acceptors: vec![N1, N2, N3],
            learners: vec![L],
        }],
        merges: Vec::new(),
        params,
    }
}

/// Acceptor `id` of `config` with nothing stored, before its first output.
pub(crate) fn acceptor(config: &MulticastConfig, id: NodeId, now: Instant) -> AcceptorNode {
    AcceptorNode::new(id, config, Recovered::default(), now).unwrap()
}

pub(crate) fn ballot(round: u64, node: NodeId) -> Ballot {
    Ballot { round, node }
}

/// The next `Ready`, its early messages first, heartbeats left out; the
/// node is then told its records are durable, as a driver would after
/// its sync.
pub(crate) fn next_ready(node: &mut AcceptorNode) -> Option<(Vec<Record>, Vec<Transmit>)> {
    let Ready {
        records,
        early,
        messages,
    } = node.poll_ready()?;
    node.synced();
    let messages = early
        .into_iter()
        .chain(messages)
        .filter(|t| !matches!(t.message, Message::Heartbeat(_)))
        .collect();
    Some((records, messages))
}

/// Every `Ready` due now, merged, heartbeats left out.
pub(crate) fn out(node: &mut AcceptorNode) -> (Vec<Record>, Vec<Transmit>) {
    let (mut records, mut messages) = (Vec::new(), Vec::new());
    while let Some((r, m)) = next_ready(node) {
        records.extend(r);
        messages.extend(m);
    }
    (records, messages)
}

pub(crate) fn to(to: NodeId, message: Message) -> Transmit {
    Transmit { to, message }
}

/// Command `seq` of proposer 77, four bytes of `seq`.
pub(crate) fn command(seq: u64) -> Command {
    Command {
        id: CommandId {
            proposer: ProposerId(77),
            seq,
        },
        low_water: 0,
        payload: Bytes::from(vec![seq as u8; 4]),
    }
}
