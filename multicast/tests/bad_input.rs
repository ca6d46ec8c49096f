//! Bad input to the protocol core: ignored or answered as the protocol says,
//! counted in a metric, never a panic (issue: "Bad input").

use std::time::{Duration, Instant};

use psmr_core::persist::Persister;
use psmr_core::proto::codec::{self, DEFAULT_MAX_FRAME};
use psmr_core::proto::{
    Accept, Ballot, Batch, Command, CommandId, Decide, LearnRequest, Learner, Message,
    MulticastConfig, NodeId, Params, Prepare, ProposerId, RingConfig, RingId, Transmit, Trimmed,
    Value, VoteSet,
};
use psmr_multicast::storage::MemoryStorage;

const R: RingId = RingId(0);
const N1: NodeId = NodeId(1);
const N2: NodeId = NodeId(2);
const N3: NodeId = NodeId(3);
const L: NodeId = NodeId(9);
const STRANGER: NodeId = NodeId(66);

fn config() -> MulticastConfig {
    MulticastConfig {
        rings: vec![RingConfig {
            id: R,
            acceptors: vec![N1, N2, N3],
            learners: vec![L],
        }],
        merges: Vec::new(),
        params: Params {
            delta: Duration::from_secs(3600),
            ..Params::default()
        },
    }
}

fn n2(now: Instant) -> Persister {
    Persister::open(N2, &config(), Box::new(MemoryStorage::ephemeral()), now).unwrap()
}

fn drain(node: &mut Persister) -> Vec<Transmit> {
    std::iter::from_fn(|| node.poll_transmit())
        .filter(|t| !matches!(t.message, Message::Heartbeat(_)))
        .collect()
}

fn accept(instance: u64, round: u64) -> Accept {
    Accept {
        ring: R,
        instance,
        ballot: Ballot { round, node: N1 },
        value: Value::Skip(1),
        votes: VoteSet(0b001),
        coordinator_pending: false,
        decided_below: 0,
    }
}

#[test]
fn a_message_for_an_unknown_ring_is_ignored_and_counted() {
    let now = Instant::now();
    let mut node = n2(now);
    let message = Message::Accept(Accept {
        ring: RingId(42),
        ..accept(0, 1)
    });
    node.handle_message(now, N1, message);
    assert_eq!(drain(&mut node), vec![]);
    assert_eq!(node.metrics().unknown_ring, 1);
}

#[test]
fn protocol_messages_from_strangers_are_ignored_and_counted() {
    let now = Instant::now();
    let mut node = n2(now);
    node.handle_message(now, STRANGER, Message::Accept(accept(0, 1)));
    let prepare = Prepare {
        ring: R,
        ballot: Ballot {
            round: 9,
            node: STRANGER,
        },
        from: 0,
    };
    node.handle_message(now, STRANGER, Message::Prepare(prepare));
    assert_eq!(drain(&mut node), vec![]);
    assert_eq!(node.metrics().unknown_peer, 2);
}

#[test]
fn a_duplicate_accept_of_a_decided_instance_is_answered_with_the_decision() {
    let now = Instant::now();
    let mut node = n2(now);
    node.handle_message(now, N1, Message::Accept(accept(0, 1)));
    drain(&mut node);
    node.handle_message(now, N1, Message::Accept(accept(0, 1)));
    let out = drain(&mut node);
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].to, N1);
    assert!(matches!(&out[0].message, Message::Decide(d) if d.instance == 0 && !d.relay));
    assert_eq!(node.metrics().duplicates, 1);
}

#[test]
fn an_instance_far_beyond_the_window_is_ignored_and_counted() {
    let now = Instant::now();
    let mut node = n2(now);
    for instance in [10_000, u64::MAX] {
        node.handle_message(now, N1, Message::Accept(accept(instance, 1)));
    }
    assert_eq!(drain(&mut node), vec![]);
    assert_eq!(node.metrics().beyond_window, 2);
}

#[test]
fn stale_prepares_are_refused_with_a_nack() {
    let now = Instant::now();
    let mut node = n2(now);
    node.handle_message(now, N1, Message::Accept(accept(0, 5)));
    drain(&mut node);
    let prepare = Prepare {
        ring: R,
        ballot: Ballot { round: 2, node: N3 },
        from: 0,
    };
    node.handle_message(now, N3, Message::Prepare(prepare));
    let out = drain(&mut node);
    assert!(
        matches!(&out[..], [Transmit { to: N3, message: Message::Nack(n) }] if n.promised.round == 5)
    );
    assert_eq!(node.metrics().stale_ballot, 1);
}

#[test]
fn hostile_numbers_do_not_panic() {
    let now = Instant::now();
    let mut node = n2(now);
    // Votes for positions beyond the ring, a huge skip, a reversed learn range.
    let mut weird = accept(0, 1);
    weird.votes = VoteSet(u64::MAX << 3);
    weird.value = Value::Skip(u64::MAX);
    node.handle_message(now, N1, Message::Accept(weird));
    let reversed = LearnRequest {
        ring: R,
        from: 100,
        to: 3,
    };
    node.handle_message(now, STRANGER, Message::LearnRequest(reversed));
    let huge = LearnRequest {
        ring: R,
        from: 0,
        to: u64::MAX,
    };
    node.handle_message(now, STRANGER, Message::LearnRequest(huge));
    let trimmed = Trimmed {
        ring: R,
        below: u64::MAX,
        position: u64::MAX,
    };
    node.handle_message(now, N3, Message::Trimmed(trimmed));
    let top = Prepare {
        ring: R,
        ballot: Ballot {
            round: u64::MAX,
            node: N3,
        },
        from: u64::MAX,
    };
    node.handle_message(now, N3, Message::Prepare(top));
    node.handle_timeout(now + Duration::from_secs(1));
    drain(&mut node);
    assert!(node.halted().is_none());
}

#[test]
fn truncated_and_garbage_frames_are_counted_and_the_node_keeps_serving() {
    let now = Instant::now();
    let mut node = n2(now);
    let good = codec::frame(&Message::Accept(accept(0, 1)), DEFAULT_MAX_FRAME).unwrap();
    let body = &good[4..];
    node.handle_frame(now, N1, &body[..body.len() / 2]);
    node.handle_frame(now, N1, &[0xde, 0xad, 0xbe, 0xef]);
    node.handle_frame(now, N1, &[codec::WIRE_VERSION + 1, 0, 0]);
    node.handle_frame(now, N1, &[]);
    assert_eq!(node.metrics().bad_frames, 4);
    node.handle_frame(now, N1, body);
    let out = drain(&mut node);
    assert!(
        out.iter()
            .any(|t| matches!(&t.message, Message::Decide(d) if d.instance == 0)),
        "the node still decides after bad frames: {out:?}"
    );
}

#[test]
fn a_learner_counts_strangers_unknown_rings_and_bad_frames() {
    let now = Instant::now();
    let mut learner = Learner::new(L, &config(), &[R], now).unwrap();
    let decide = Decide {
        ring: R,
        instance: 0,
        ballot: Ballot { round: 1, node: N1 },
        value: Value::Skip(1),
        relay: false,
        hops: 0,
    };
    learner.handle_message(now, STRANGER, Message::Decide(decide.clone()));
    let other_ring = Decide {
        ring: RingId(8),
        ..decide.clone()
    };
    learner.handle_message(now, N1, Message::Decide(other_ring));
    learner.handle_frame(now, N1, &[1, 2, 3]);
    let far = Decide {
        instance: u64::MAX,
        ..decide.clone()
    };
    learner.handle_message(now, N1, Message::Decide(far));
    let m = learner.metrics();
    assert_eq!(
        (
            m.unknown_peer,
            m.unknown_ring,
            m.bad_frames,
            m.beyond_buffer
        ),
        (1, 1, 1, 1)
    );
    assert!(learner.poll_delivery().is_none());
    learner.handle_message(now, N1, Message::Decide(decide.clone()));
    learner.handle_message(now, N2, Message::Decide(decide));
    assert!(learner.poll_delivery().is_some());
    assert_eq!(learner.metrics().duplicate_decisions, 1);
}

#[test]
fn a_learner_refuses_a_decision_whose_batch_does_not_decode_and_delivers_a_good_copy() {
    let now = Instant::now();
    let mut learner = Learner::new(L, &config(), &[R], now).unwrap();
    let command = Command {
        id: CommandId {
            proposer: ProposerId(4),
            seq: 0,
        },
        low_water: 0,
        payload: bytes::Bytes::from_static(b"put 1"),
    };
    let good = Batch::new(std::slice::from_ref(&command));
    let mut garbage = good.encoded().to_vec();
    garbage.truncate(garbage.len() - 2);
    let wire = postcard::to_allocvec(&bytes::Bytes::from(garbage)).unwrap();
    let bad: Batch = postcard::from_bytes(&wire).unwrap();
    let decide = |batch: Batch| {
        let message = Message::Decide(Decide {
            ring: R,
            instance: 0,
            ballot: Ballot { round: 1, node: N1 },
            value: Value::Batch(batch),
            relay: false,
            hops: 0,
        });
        codec::frame(&message, DEFAULT_MAX_FRAME).unwrap()
    };
    learner.handle_frame(now, N1, &decide(bad)[4..]);
    assert_eq!(learner.metrics().bad_frames, 1);
    assert!(learner.poll_delivery().is_none());
    learner.handle_frame(now, N2, &decide(good)[4..]);
    let delivered = learner.poll_delivery().expect("the good copy is delivered");
    assert_eq!(delivered.value.commands(), &[command]);
}

/// A client may propose under ids of its own certificate's tag only, and
/// never a checkpoint marker or a protocol message: anything else is
/// refused whole and counted.
#[test]
fn a_client_frame_is_a_proposal_under_its_own_tag_or_refused() {
    use psmr_core::proto::Propose;
    use psmr_core::{ClientId, ClientTag, Marker};
    let now = Instant::now();
    let mut node = n2(now);
    let client = NodeId(psmr_multicast::net::ANONYMOUS_BASE + 7);
    let (mine, theirs) = (ClientTag(0x00ab_cdef), ClientTag(0x0012_3456));
    let proposal = |tag: ClientTag, payload: &'static [u8]| {
        let command = Command {
            id: CommandId {
                proposer: ProposerId(ClientId::tagged(tag, 42).0),
                seq: 0,
            },
            low_water: 0,
            payload: bytes::Bytes::from_static(payload),
        };
        let message = Message::Propose(Propose {
            ring: R,
            commands: vec![command],
            forwarded: false,
        });
        codec::frame(&message, DEFAULT_MAX_FRAME).unwrap()[4..].to_vec()
    };
    node.node
        .handle_client_frame(now, client, mine, &proposal(mine, b"ok"));
    assert_eq!(node.node.metrics().commands_received, 1);
    assert_eq!(node.node.metrics().refused_proposals, 0);
    // Another certificate's id.
    node.node
        .handle_client_frame(now, client, mine, &proposal(theirs, b"x"));
    // An anonymous client under a certified one's id.
    node.node
        .handle_client_frame(now, client, ClientTag::ANONYMOUS, &proposal(mine, b"x"));
    // A checkpoint marker, even under its own id.
    let marker = Marker { number: 9 }.encode();
    let marker: &'static [u8] = Box::leak(marker.to_vec().into_boxed_slice());
    node.node
        .handle_client_frame(now, client, mine, &proposal(mine, marker));
    // A protocol message.
    let trimmed = Message::Trimmed(Trimmed {
        ring: R,
        below: 5,
        position: 0,
    });
    let body = codec::frame(&trimmed, DEFAULT_MAX_FRAME).unwrap()[4..].to_vec();
    node.node.handle_client_frame(now, client, mine, &body);
    assert_eq!(node.node.metrics().refused_proposals, 4);
    assert_eq!(
        node.node.metrics().commands_received,
        1,
        "none of them taken"
    );
}
