//! Exact outputs of an acceptor node's handlers, with nothing stored
//! (docs/ARCHITECTURE.md, "The atomic multicast"): given a message, the exact
//! messages and records out. Ring r0 = [n1, n2, n3]; the node under test is n2.

use std::time::{Duration, Instant};

use common::{L, N1, N2, N3, R, acceptor, ballot, out, ring, to};
use psmr_core::proto::{
    Accept, AcceptorNode, Chosen, Decide, LearnRequest, Message, Nack, Params, Prepare, RingId,
    Value, VoteSet,
};
use psmr_core::storage::Record;

mod common;

fn n2(now: Instant) -> AcceptorNode {
    let params = Params {
        delta: Duration::from_secs(3600),
        ..Params::default()
    };
    let mut n2 = acceptor(&ring(params), N2, now);
    out(&mut n2);
    n2
}

fn accept(instance: u64, round: u64, votes: u64) -> Accept {
    Accept {
        ring: R,
        instance,
        ballot: ballot(round, N1),
        value: Value::Skip(1),
        votes: VoteSet(votes),
        coordinator_pending: false,
        decided_below: 0,
    }
}

// Contract: an Accept below the promise is refused with the promised
// ballot, so that a replaced coordinator learns it (and steps down), and
// nothing is recorded.
#[test]
fn an_accept_below_the_promise_is_refused_with_the_higher_ballot() {
    let now = Instant::now();
    let mut n2 = n2(now);
    let prepare = Prepare {
        ring: R,
        ballot: ballot(3, N3),
        from: 0,
    };
    n2.handle_message(now, N3, Message::Prepare(prepare));
    out(&mut n2);
    n2.handle_message(now, N1, Message::Accept(accept(0, 1, 0b001)));
    assert_eq!(
        out(&mut n2),
        (
            vec![],
            vec![to(
                N1,
                Message::Nack(Nack {
                    ring: R,
                    promised: ballot(3, N3)
                })
            )]
        )
    );
}

// Contract: a Prepare below the promise is refused the same way.
#[test]
fn a_prepare_below_the_promise_is_refused() {
    let now = Instant::now();
    let mut n2 = n2(now);
    let high = Prepare {
        ring: R,
        ballot: ballot(4, N3),
        from: 0,
    };
    n2.handle_message(now, N3, Message::Prepare(high));
    out(&mut n2);
    let low = Prepare {
        ring: R,
        ballot: ballot(2, N1),
        from: 0,
    };
    n2.handle_message(now, N1, Message::Prepare(low));
    let (records, messages) = out(&mut n2);
    assert_eq!(records, vec![]);
    assert_eq!(
        messages,
        vec![to(
            N1,
            Message::Nack(Nack {
                ring: R,
                promised: ballot(4, N3)
            })
        )]
    );
}

// Contract: the acceptor whose vote makes f+1 decides: it records the vote
// and tells the learners and the coordinator, and relays around the ring.
#[test]
fn the_vote_that_makes_a_quorum_decides_and_tells_everyone() {
    let now = Instant::now();
    let mut n2 = n2(now);
    n2.handle_message(now, N1, Message::Accept(accept(0, 1, 0b001)));
    let (records, messages) = out(&mut n2);
    assert!(records.contains(&Record::Accept {
        ring: R,
        instance: 0,
        ballot: ballot(1, N1),
        value: Value::Skip(1),
    }));
    let decide = Decide {
        ring: R,
        instance: 0,
        ballot: ballot(1, N1),
        value: Value::Skip(1),
        relay: false,
        hops: 0,
    };
    let relay = Decide {
        relay: true,
        hops: 1,
        ..decide.clone()
    };
    assert_eq!(
        messages,
        vec![
            to(L, Message::Decide(decide)),
            to(
                N1,
                Message::Chosen(Chosen {
                    ring: R,
                    instance: 0,
                    ballot: ballot(1, N1)
                })
            ),
            to(N3, Message::Decide(relay))
        ]
    );
    assert_eq!(n2.frontier(R), Some(1));
}

// Contract: a learn request is answered with the decided instances it asks
// for, and nothing beyond what is decided.
#[test]
fn a_learn_request_is_answered_with_the_decided_instances() {
    let now = Instant::now();
    let mut n2 = n2(now);
    n2.handle_message(now, N1, Message::Accept(accept(0, 1, 0b001)));
    n2.handle_message(now, N1, Message::Accept(accept(1, 1, 0b001)));
    out(&mut n2);
    let request = LearnRequest {
        ring: R,
        from: 0,
        to: 5,
    };
    n2.handle_message(now, L, Message::LearnRequest(request));
    let (records, messages) = out(&mut n2);
    assert_eq!(records, vec![]);
    let answered: Vec<u64> = messages
        .iter()
        .map(|t| match &t.message {
            Message::Decide(d) if t.to == L => d.instance,
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(answered, vec![0, 1]);
}

// Contract: a message for a ring the node is not in is counted and dropped.
#[test]
fn a_message_for_an_unknown_ring_is_counted_and_dropped() {
    let now = Instant::now();
    let mut n2 = n2(now);
    let stray = Accept {
        ring: RingId(9),
        ..accept(0, 1, 0b001)
    };
    n2.handle_message(now, N1, Message::Accept(stray));
    assert_eq!(out(&mut n2), (vec![], vec![]));
    assert_eq!(n2.metrics().unknown_ring, 1);
}

fn decided_n2(params: Params, count: u64, now: Instant) -> AcceptorNode {
    let mut n2 = acceptor(&ring(params), N2, now);
    out(&mut n2);
    for i in 0..count {
        n2.handle_message(now, N1, Message::Accept(accept(i, 1, 0b001)));
    }
    out(&mut n2);
    n2
}

fn trims(records: &[Record]) -> Vec<u64> {
    records
        .iter()
        .filter_map(|r| match r {
            Record::Trim { below, .. } => Some(*below),
            _ => None,
        })
        .collect()
}

fn checkpointed(below: u64) -> Message {
    Message::Checkpointed(psmr_core::proto::Checkpointed { ring: R, below })
}

// Contract: an acceptor trims what the ring's replicas have checkpointed
// (every replica by default), only from a replica of the ring, never past
// what it knows decided, and answers a learner asking below with Trimmed.
#[test]
fn decisions_are_trimmed_below_what_the_replicas_checkpointed() {
    let now = Instant::now();
    let params = Params {
        delta: Duration::from_secs(3600),
        ..Params::default()
    };
    let mut n2 = decided_n2(params, 10, now);
    n2.handle_message(now, N3, checkpointed(8));
    n2.handle_timeout(now + Duration::from_secs(1));
    assert_eq!(
        trims(&out(&mut n2).0),
        Vec::<u64>::new(),
        "n3 is no replica"
    );
    n2.handle_message(now, L, checkpointed(6));
    n2.handle_timeout(now + Duration::from_secs(2));
    assert_eq!(trims(&out(&mut n2).0), vec![6]);
    n2.handle_message(now, L, checkpointed(4));
    n2.handle_message(now, L, checkpointed(50));
    n2.handle_timeout(now + Duration::from_secs(3));
    assert_eq!(trims(&out(&mut n2).0), vec![10], "never past the frontier");
    let request = LearnRequest {
        ring: R,
        from: 0,
        to: 5,
    };
    n2.handle_message(now, L, Message::LearnRequest(request));
    let (_, messages) = out(&mut n2);
    assert!(
        matches!(&messages[..], [t] if matches!(&t.message, Message::Trimmed(t) if t.below == 10)),
        "{messages:?}"
    );
}

// Contract: with no replica report, an acceptor keeps at most
// `retention_bytes` of decided instances, trimming down to three quarters.
#[test]
fn decisions_beyond_the_byte_bound_are_trimmed_whatever_the_replicas_report() {
    let now = Instant::now();
    let params = Params {
        delta: Duration::from_secs(3600),
        retention_bytes: 5 * psmr_core::proto::SLOT_BYTES,
        ..Params::default()
    };
    let mut n2 = decided_n2(params, 10, now);
    n2.handle_timeout(now + Duration::from_secs(1));
    // 10 slots of 96 bytes; down to 360 bytes: 3 slots kept.
    assert_eq!(trims(&out(&mut n2).0), vec![7]);
}
