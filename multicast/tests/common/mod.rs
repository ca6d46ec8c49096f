//! Fixtures shared by the exact-output tests of the protocol core
//! (`protocol.rs`, `five_acceptors.rs`): one ring r0, real `AcceptorNode`s
//! over ephemeral memory storage, and what they send, heartbeats left out.

// Each test crate that includes this module uses only part of it.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use bytes::Bytes;
use psmr_core::persist::Persister;
use psmr_core::proto::{
    Ballot, Command, CommandId, Message, MulticastConfig, NodeId, Params, ProposerId, RingConfig,
    RingId, Transmit,
};
use psmr_multicast::storage::MemoryStorage;

pub(crate) const R: RingId = RingId(0);

/// Ring r0 with `acceptors` (in ring order) and `learners`, leveling far
/// away so that a test sees only what it causes.
pub(crate) fn ring(acceptors: &[NodeId], learners: &[NodeId]) -> MulticastConfig {
    MulticastConfig {
        rings: vec![RingConfig {
            id: R,
            acceptors: acceptors.to_vec(),
            learners: learners.to_vec(),
        }],
        merges: Vec::new(),
        params: Params {
            delta: Duration::from_secs(3600),
            ..Params::default()
        },
    }
}

/// Acceptor `id` of `config`, started at `now` with nothing stored.
pub(crate) fn acceptor(config: &MulticastConfig, id: NodeId, now: Instant) -> Persister {
    Persister::open(id, config, Box::new(MemoryStorage::ephemeral()), now).unwrap()
}

/// Everything `node` sends, heartbeats left out.
pub(crate) fn drain(node: &mut Persister) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit())
        .filter(|t| !matches!(t.message, Message::Heartbeat(_)))
        .collect()
}

pub(crate) fn ballot(round: u64, node: NodeId) -> Ballot {
    Ballot { round, node }
}

/// Command `seq` of proposer 77, its payload `len` bytes of `seq`.
pub(crate) fn command(seq: u64, len: usize) -> Command {
    Command {
        id: CommandId {
            proposer: ProposerId(77),
            seq,
        },
        low_water: 0,
        payload: Bytes::from(vec![seq as u8; len]),
    }
}

pub(crate) fn to(to: NodeId, message: Message) -> Transmit {
    Transmit { to, message }
}
