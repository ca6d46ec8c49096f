//! Exact outputs of coordinator terms and failover at an acceptor node
//! (docs/ARCHITECTURE.md, "The atomic multicast": Phase 1, leadership):
//! n1 is the first acceptor of ring r0 = [n1, n2, n3] and starts a term.

use std::time::{Duration, Instant};

use common::{N1, N2, N3, R, acceptor, command, out, ring};
use psmr_core::proto::{
    Accept, AcceptorNode, Ballot, Decide, Message, Nack, NodeId, Params, Prepare, Promise,
    PromisedSlot, Propose, Ready, Transmit, Value, VoteSet,
};
use psmr_core::storage::Record;

mod common;

const B1: Ballot = Ballot { round: 1, node: N1 };

fn n1(now: Instant) -> AcceptorNode {
    acceptor(&ring(Params::default()), N1, now)
}

fn promise(slots: Vec<PromisedSlot>) -> Message {
    Message::Promise(Promise {
        ring: R,
        ballot: B1,
        frontier: 0,
        frontier_position: 0,
        slots,
    })
}

/// n1 leading ring r0 at B1 after n2's promise.
fn leader(now: Instant) -> AcceptorNode {
    let mut n1 = n1(now);
    out(&mut n1);
    n1.handle_message(now, N2, promise(Vec::new()));
    out(&mut n1);
    assert_eq!(n1.positions(R).unwrap().term, Some(B1));
    n1
}

// Contract: the first acceptor in ring order starts a term at start with a
// Prepare to the others; its own acceptor promises last, so nothing is
// recorded yet.
#[test]
fn the_first_acceptor_prepares_and_its_own_promise_waits_for_a_quorum() {
    let now = Instant::now();
    let mut n1 = n1(now);
    let prepare = Prepare {
        ring: R,
        ballot: B1,
        from: 0,
    };
    assert_eq!(
        out(&mut n1),
        (
            vec![],
            vec![
                Transmit {
                    to: N2,
                    message: Message::Prepare(prepare.clone())
                },
                Transmit {
                    to: N3,
                    message: Message::Prepare(prepare)
                }
            ]
        )
    );
    assert_eq!(n1.positions(R).unwrap().promised, Ballot::default());
}

// Contract: one promise makes a quorum with the candidate's own acceptor;
// the new coordinator records its promise and vote bound, re-proposes the
// value the promise reported at its own ballot, votes for it first, and
// sends it along the ring.
#[test]
fn a_quorum_of_promises_starts_the_term_and_re_proposes_what_was_accepted() {
    let now = Instant::now();
    let mut n1 = n1(now);
    out(&mut n1);
    let accepted = PromisedSlot {
        instance: 0,
        ballot: Ballot { round: 0, node: N3 },
        value: Value::Skip(3),
        decided: false,
    };
    n1.handle_message(now, N2, promise(vec![accepted]));
    assert_eq!(
        out(&mut n1),
        (
            vec![
                Record::Promise {
                    ring: R,
                    ballot: B1
                },
                Record::VoteBound {
                    ring: R,
                    bound: Params::default().vote_bound_reserve
                },
                Record::Accept {
                    ring: R,
                    instance: 0,
                    ballot: B1,
                    value: Value::Skip(3)
                },
            ],
            vec![Transmit {
                to: N2,
                message: Message::Accept(Accept {
                    ring: R,
                    instance: 0,
                    ballot: B1,
                    value: Value::Skip(3),
                    votes: VoteSet(0b001),
                    coordinator_pending: false,
                    decided_below: 0,
                })
            }]
        )
    );
    let positions = n1.positions(R).unwrap();
    assert_eq!(
        (positions.term, positions.next_proposal),
        (Some(B1), Some((1, 3)))
    );
}

// Contract: a refusal that carries a higher ballot ends the term at once,
// without a new election, and records nothing.
#[test]
fn a_refusal_with_a_higher_ballot_ends_the_term() {
    let now = Instant::now();
    let mut n1 = leader(now);
    let higher = Ballot { round: 5, node: N3 };
    n1.handle_message(
        now,
        N3,
        Message::Nack(Nack {
            ring: R,
            promised: higher,
        }),
    );
    let (records, _) = out(&mut n1);
    assert_eq!(records, vec![]);
    let positions = n1.positions(R).unwrap();
    assert_eq!((positions.term, positions.seen), (None, higher));
    assert_eq!(n1.metrics().step_downs, 1);
    assert_eq!(n1.metrics().elections, 1, "no new election");
}

// Contract: a decision made at a higher ballot tells a coordinator it was
// replaced: it ends its term and takes the decision.
#[test]
fn a_decision_at_a_higher_ballot_ends_the_term() {
    let now = Instant::now();
    let mut n1 = leader(now);
    let higher = Ballot { round: 4, node: N2 };
    let decide = Decide {
        ring: R,
        instance: 0,
        ballot: higher,
        value: Value::Skip(1),
        relay: false,
        hops: 0,
    };
    n1.handle_message(now, N2, Message::Decide(decide));
    out(&mut n1);
    let positions = n1.positions(R).unwrap();
    assert_eq!(positions.term, None);
    assert_eq!(positions.frontier, 1);
    assert_eq!(n1.metrics().step_downs, 1);
}

// Contract: a promise from a node outside the ring is not counted towards
// a quorum.
#[test]
fn a_promise_from_a_stranger_does_not_make_a_quorum() {
    let now = Instant::now();
    let mut n1 = n1(now);
    out(&mut n1);
    n1.handle_message(now, NodeId(9), promise(Vec::new()));
    assert_eq!(out(&mut n1), (vec![], vec![]));
    assert_eq!(n1.positions(R).unwrap().promised, Ballot::default());
    assert_eq!(n1.metrics().unknown_peer, 1);
}

// Contract: a candidate with no answer sends its Prepares again after the
// retry timeout, at the same ballot (no election storm).
#[test]
fn an_unanswered_prepare_is_resent_at_the_same_ballot() {
    let t0 = Instant::now();
    let mut n1 = n1(t0);
    out(&mut n1);
    let later = t0 + Params::default().retry_timeout + Duration::from_millis(5);
    n1.handle_timeout(later);
    let (_, messages) = out(&mut n1);
    let prepares: Vec<(NodeId, Ballot)> = messages
        .iter()
        .filter_map(|t| match &t.message {
            Message::Prepare(p) => Some((t.to, p.ballot)),
            _ => None,
        })
        .collect();
    assert_eq!(prepares, vec![(N2, B1), (N3, B1)], "{messages:?}");
    assert_eq!(n1.metrics().elections, 1);
}

// Contract: the promise a term rests on is durable before the term is
// announced: with no value to re-propose, the record waits and leaves with
// the first heartbeat.
#[test]
fn a_terms_promise_leaves_with_its_first_announcement() {
    let t0 = Instant::now();
    let mut n1 = n1(t0);
    out(&mut n1);
    n1.handle_message(t0, N2, promise(Vec::new()));
    assert!(
        n1.poll_ready().is_none(),
        "nothing to send yet, nothing handed over"
    );
    let heartbeat = t0 + Params::default().heartbeat_interval;
    n1.handle_timeout(heartbeat);
    let Ready {
        records, messages, ..
    } = n1.poll_ready().expect("a heartbeat");
    assert_eq!(
        records,
        vec![Record::Promise {
            ring: R,
            ballot: B1
        }]
    );
    assert!(
        messages
            .iter()
            .all(|t| matches!(t.message, Message::Heartbeat(_))),
        "{messages:?}"
    );
    assert_eq!(messages.len(), 2, "one per peer");
}

fn n2_follower(now: Instant) -> AcceptorNode {
    let mut n2 = acceptor(&ring(Params::default()), N2, now);
    out(&mut n2);
    n2
}

fn proposal(forwarded: bool) -> Message {
    Message::Propose(Propose {
        ring: R,
        commands: vec![command(0)],
        forwarded,
    })
}

// Contract: an acceptor that does not coordinate forwards a client's
// proposal to the coordinator it believes in, marked forwarded.
#[test]
fn a_proposal_to_a_follower_is_forwarded_to_the_coordinator() {
    let now = Instant::now();
    let mut n2 = n2_follower(now);
    n2.handle_message(now, NodeId(500), proposal(false));
    assert_eq!(
        out(&mut n2),
        (
            vec![],
            vec![Transmit {
                to: N1,
                message: proposal(true)
            }]
        )
    );
    assert_eq!(n2.metrics().commands_forwarded, 1);
}

// Contract: a forwarded proposal is never forwarded again (no loops between
// nodes that disagree on the coordinator): it is dropped and counted, and
// the client's proposer resends it.
#[test]
fn a_forwarded_proposal_is_not_forwarded_again() {
    let now = Instant::now();
    let mut n2 = n2_follower(now);
    n2.handle_message(now, N3, proposal(true));
    assert_eq!(out(&mut n2), (vec![], vec![]));
    assert_eq!(n2.metrics().commands_dropped, 1);
    assert_eq!(n2.metrics().commands_forwarded, 0);
}
