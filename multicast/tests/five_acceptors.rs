//! The agreement bug found on rings of five acceptors, as an exact-output
//! regression test of the real protocol core.
//!
//! Ring r0 has acceptors n1..n5 (quorum 3) and learners n8, n9. Before the
//! fix: n1 leads at b1; n1 and n2 vote (b1, v) for instance 0 and n2's
//! forward to n3 is lost; n3, n4, n5 stop hearing n1 and n2 and n3 leads at
//! b2, where w is decided for instance 0; n5's relay of that decision
//! reaches n1, which took it as the end of its own instance 0 and proposed
//! instance 1 with `decided_below = 1`; n2 applied the hint, marked (b1, v)
//! decided and served v to learners, while n8 had delivered w.
//!
//! Now a coordinator that learns of a decision at a higher ballot ends its
//! term, and never advertises such an instance as decided in its own ballot.

use std::time::{Duration, Instant};

use psmr_core::persist::Persister;
use psmr_core::proto::{
    Accept, Command, Decide, Heartbeat, LearnRequest, Message, MulticastConfig, NodeId, Prepare,
    Promise, Propose, Transmit, Value, VoteSet,
};

mod common;
use common::{R, ballot, drain, to};

const N: [NodeId; 5] = [NodeId(1), NodeId(2), NodeId(3), NodeId(4), NodeId(5)];
const L8: NodeId = NodeId(8);
const L9: NodeId = NodeId(9);

fn config() -> MulticastConfig {
    common::ring(&N, &[L8, L9])
}

fn node(id: NodeId, now: Instant) -> Persister {
    common::acceptor(&config(), id, now)
}

fn value(seq: u64) -> Value {
    Value::batch(vec![common::command(seq, 4)])
}

fn commands(v: &Value) -> Vec<Command> {
    v.commands().to_vec()
}

/// A heartbeat from a peer that hears `hears` and leads nothing.
fn heartbeat(hears: &[NodeId]) -> Message {
    Message::Heartbeat(Heartbeat {
        hears: hears.to_vec(),
        rings: Vec::new(),
    })
}

#[test]
fn a_coordinator_that_learns_of_a_higher_ballot_decision_ends_its_term() {
    let t0 = Instant::now();
    let [n1_id, n2_id, n3_id, n4_id, n5_id] = N;
    let (b1, b2, b3) = (ballot(1, n1_id), ballot(1, n3_id), ballot(2, n1_id));
    let (v, w, x) = (value(1), value(2), value(3));
    let mut n: Vec<Persister> = N.iter().map(|&id| node(id, t0)).collect();

    // n1 leads at b1 after n2's and n3's promises.
    let prepare = |b, from| Prepare {
        ring: R,
        ballot: b,
        from,
    };
    let sent = drain(&mut n[0]);
    let expected: Vec<Transmit> = N[1..]
        .iter()
        .map(|&a| to(a, Message::Prepare(prepare(b1, 0))))
        .collect();
    assert_eq!(sent, expected, "the first in ring order prepares at start");
    for i in [1, 2] {
        n[i].handle_message(t0, n1_id, Message::Prepare(prepare(b1, 0)));
        let promise = drain(&mut n[i]).remove(0);
        n[0].handle_message(t0, N[i], promise.message);
    }
    assert!(n[0].is_coordinator(R));

    // n1 proposes v for instance 0; n2 votes; n2's forward to n3 is lost.
    let propose = |v: &Value| {
        Message::Propose(Propose {
            ring: R,
            commands: commands(v),
            forwarded: false,
        })
    };
    n[0].handle_message(t0, NodeId(500), propose(&v));
    let accept_v = Accept {
        ring: R,
        instance: 0,
        ballot: b1,
        value: v.clone(),
        votes: VoteSet(0b00001),
        coordinator_pending: false,
        decided_below: 0,
    };
    assert_eq!(
        drain(&mut n[0]),
        vec![to(n2_id, Message::Accept(accept_v.clone()))]
    );
    n[1].handle_message(t0, n1_id, Message::Accept(accept_v.clone()));
    let forward = Accept {
        votes: VoteSet(0b00011),
        coordinator_pending: false,
        ..accept_v
    };
    assert_eq!(drain(&mut n[1]), vec![to(n3_id, Message::Accept(forward))]);

    // n1 keeps hearing n2 and n5 (its quorum) ...
    let suspect = config().params.suspect_timeout;
    for peer in [n2_id, n5_id] {
        n[0].handle_message(t0 + suspect / 2, peer, heartbeat(&N));
    }
    drain(&mut n[0]);
    // ... while n3, n4, n5 stop hearing n1 and n2; n3, first viable in ring
    // order, leads at b2 with n4's and n5's promises.
    let t1 = t0 + suspect + Duration::from_millis(1);
    let three = [n3_id, n4_id, n5_id];
    for i in [2, 3, 4] {
        for &peer in three.iter().filter(|&&p| p != N[i]) {
            n[i].handle_message(t1, peer, heartbeat(&three));
        }
    }
    drain(&mut n[3]);
    drain(&mut n[4]);
    let sent = drain(&mut n[2]);
    let expected: Vec<Transmit> = [n1_id, n2_id, n4_id, n5_id]
        .iter()
        .map(|&a| to(a, Message::Prepare(prepare(b2, 0))))
        .collect();
    assert_eq!(sent, expected, "n3 takes over at b2");
    for i in [3, 4] {
        n[i].handle_message(t1, n3_id, Message::Prepare(prepare(b2, 0)));
        let promise = drain(&mut n[i]).remove(0);
        assert!(
            matches!(promise.message, Message::Promise(Promise { ballot, .. }) if ballot == b2)
        );
        n[2].handle_message(t1, N[i], promise.message);
    }
    assert!(n[2].is_coordinator(R));

    // Phase 1 found nothing for instance 0 at n3, n4, n5 (the vote for v is
    // at n1 and n2 only), so n3 fills it with a skip; then w goes to instance 1.
    // For the scenario, w is decided in instance 0: n3 proposes it there
    // directly, as a coordinator whose Phase 1 found it would.
    let accept_w = Accept {
        ring: R,
        instance: 0,
        ballot: b2,
        value: w.clone(),
        votes: VoteSet(0b00100),
        coordinator_pending: false,
        decided_below: 0,
    };
    n[3].handle_message(t1, n3_id, Message::Accept(accept_w.clone()));
    let at_n5 = Accept {
        votes: VoteSet(0b01100),
        coordinator_pending: false,
        ..accept_w.clone()
    };
    assert_eq!(
        drain(&mut n[3]),
        vec![to(n5_id, Message::Accept(at_n5.clone()))]
    );
    n[4].handle_message(t1, n4_id, Message::Accept(at_n5));
    let decide_w = Decide {
        ring: R,
        instance: 0,
        ballot: b2,
        value: w.clone(),
        relay: false,
        hops: 0,
    };
    let sent = drain(&mut n[4]);
    assert_eq!(
        sent[..2],
        [
            to(L8, Message::Decide(decide_w.clone())),
            to(L9, Message::Decide(decide_w.clone()))
        ]
    );

    // n5's relay of w reaches n1 (the partition heals for that message),
    // while n1 still hears a quorum (n2 and n5) and holds instance 0 in flight.
    assert!(n[0].is_coordinator(R));
    let relay = Decide {
        relay: true,
        hops: 1,
        ..decide_w.clone()
    };
    n[0].handle_message(t1, n5_id, Message::Decide(relay));
    let onward = Decide {
        relay: true,
        hops: 2,
        ..decide_w.clone()
    };
    // Before the fix: the relay onward, then Accept(1, b1, .., decided_below = 1)
    // at the next proposal. Now: the relay onward, and a new term above b2.
    let expected: Vec<Transmit> = [to(n2_id, Message::Decide(onward.clone()))]
        .into_iter()
        .chain(
            [n2_id, n3_id, n4_id, n5_id]
                .iter()
                .map(|&a| to(a, Message::Prepare(prepare(b3, 1)))),
        )
        .collect();
    assert_eq!(drain(&mut n[0]), expected);
    assert!(!n[0].is_coordinator(R), "n1's term at b1 ended");
    assert_eq!(n[0].metrics().step_downs, 1);

    // A new proposal waits for the new term: no Accept in the old ballot.
    n[0].handle_message(t1, NodeId(500), propose(&x));
    assert_eq!(drain(&mut n[0]), vec![]);

    // n2 still holds (b1, v) undecided: a learner asking for instance 0
    // gets nothing from it, never v.
    let ask = Message::LearnRequest(LearnRequest {
        ring: R,
        from: 0,
        to: 1,
    });
    n[1].handle_message(t1, L9, ask.clone());
    assert_eq!(drain(&mut n[1]), vec![]);
    // Once the relay of w reaches n2, it serves w.
    n[1].handle_message(t1, n1_id, Message::Decide(onward));
    drain(&mut n[1]);
    n[1].handle_message(t1, L9, ask);
    assert_eq!(drain(&mut n[1]), vec![to(L9, Message::Decide(decide_w))]);
}

// Reference: Paxos Phase 2b — an acceptor never votes below its promise, and
// a refusal names the higher ballot, also for an instance it knows decided
// (a coordinator cut off from its ring learns so that it was replaced).
#[test]
fn a_stale_accept_for_a_decided_instance_is_refused_with_the_higher_ballot() {
    let t0 = Instant::now();
    let mut n2 = node(N[1], t0);
    let b2 = ballot(1, N[2]);
    n2.handle_message(
        t0,
        N[2],
        Message::Prepare(Prepare {
            ring: R,
            ballot: b2,
            from: 0,
        }),
    );
    drain(&mut n2);
    let decided = Decide {
        ring: R,
        instance: 0,
        ballot: b2,
        value: value(2),
        relay: false,
        hops: 0,
    };
    n2.handle_message(t0, N[2], Message::Decide(decided));
    drain(&mut n2);
    let stale = Accept {
        ring: R,
        instance: 0,
        ballot: ballot(1, N[0]),
        value: value(1),
        votes: VoteSet(0b00001),
        coordinator_pending: false,
        decided_below: 1,
    };
    n2.handle_message(t0, N[0], Message::Accept(stale));
    let nack = psmr_core::proto::Nack {
        ring: R,
        promised: b2,
    };
    assert_eq!(drain(&mut n2), vec![to(N[0], Message::Nack(nack))]);
}
