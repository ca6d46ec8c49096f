//! Exact outputs of the learner's handlers (docs/ARCHITECTURE.md, "The
//! atomic multicast"): given decisions, the exact deliveries and requests.

use std::time::{Duration, Instant};

use common::{L, N1, N2, N3, R, command, ring};
use psmr_core::proto::{
    Ballot, Decide, Delivery, LearnRequest, Learner, Message, NodeId, Params, RingId, Transmit,
    Trimmed, Value,
};

mod common;

fn learner(now: Instant) -> Learner {
    Learner::new(L, &ring(Params::default()), &[R], now).unwrap()
}

fn decide(instance: u64, value: Value) -> Message {
    Message::Decide(Decide {
        ring: R,
        instance,
        ballot: Ballot { round: 1, node: N1 },
        value,
        relay: false,
        hops: 0,
    })
}

fn deliveries(l: &mut Learner) -> Vec<Delivery> {
    std::iter::from_fn(|| l.poll_delivery()).collect()
}

fn delivery(instance: u64, value: Value) -> Delivery {
    Delivery {
        ring: R,
        instance,
        value,
    }
}

// Contract: per ring, instances are delivered in instance order, whatever
// order their decisions arrive in.
#[test]
fn decisions_are_delivered_in_instance_order() {
    let now = Instant::now();
    let mut l = learner(now);
    l.handle_message(now, N2, decide(1, Value::Skip(1)));
    assert_eq!(deliveries(&mut l), vec![], "instance 0 is missing");
    l.handle_message(now, N1, decide(0, Value::batch(vec![command(1)])));
    assert_eq!(
        deliveries(&mut l),
        vec![
            delivery(0, Value::batch(vec![command(1)])),
            delivery(1, Value::Skip(1))
        ]
    );
    assert_eq!(l.next_instance(R), Some(2));
}

// Contract: an instance is delivered once, however often it is decided.
#[test]
fn a_repeated_decision_is_delivered_once() {
    let now = Instant::now();
    let mut l = learner(now);
    l.handle_message(now, N1, decide(0, Value::Skip(1)));
    l.handle_message(now, N2, decide(0, Value::Skip(1)));
    assert_eq!(deliveries(&mut l), vec![delivery(0, Value::Skip(1))]);
}

// Contract: integrity, at most once per ring: a command decided again in a
// later instance (a proposer's retry) is left out of that delivery.
#[test]
fn a_command_decided_twice_is_delivered_once() {
    let now = Instant::now();
    let mut l = learner(now);
    l.handle_message(now, N1, decide(0, Value::batch(vec![command(1)])));
    l.handle_message(
        now,
        N1,
        decide(1, Value::batch(vec![command(1), command(2)])),
    );
    assert_eq!(
        deliveries(&mut l),
        vec![
            delivery(0, Value::batch(vec![command(1)])),
            delivery(1, Value::batch(vec![command(2)]))
        ]
    );
    assert_eq!(l.metrics().duplicate_commands, 1);
}

// Contract: only the ring's acceptors are heard; anything else is counted.
#[test]
fn a_decision_from_a_stranger_or_for_another_ring_is_counted_not_delivered() {
    let now = Instant::now();
    let mut l = learner(now);
    l.handle_message(now, NodeId(9), decide(0, Value::Skip(1)));
    let other_ring = Message::Decide(Decide {
        ring: RingId(5),
        instance: 0,
        ballot: Ballot::default(),
        value: Value::Skip(1),
        relay: false,
        hops: 0,
    });
    l.handle_message(now, N1, other_ring);
    assert_eq!(deliveries(&mut l), vec![]);
    assert_eq!(l.metrics().unknown_peer, 1);
    assert_eq!(l.metrics().unknown_ring, 1);
}

// Contract: a gap is asked for, from the first missing instance, once the
// recovery timeout has passed.
#[test]
fn a_gap_is_asked_for_after_the_recovery_timeout() {
    let t0 = Instant::now();
    let mut l = learner(t0);
    l.handle_message(t0, N1, decide(3, Value::Skip(1)));
    l.handle_timeout(t0);
    let mut asked: Vec<Transmit> = std::iter::from_fn(|| l.poll_transmit()).collect();
    let later = t0 + Params::default().recovery_timeout + Duration::from_millis(1);
    l.handle_timeout(later);
    asked.extend(std::iter::from_fn(|| l.poll_transmit()));
    assert_eq!(asked.len(), 1, "{asked:?}");
    let Message::LearnRequest(LearnRequest { ring, from, to }) = asked[0].message else {
        panic!("{asked:?}");
    };
    assert_eq!((ring, from), (R, 0));
    assert!(to >= 3, "up to the decision seen: {to}");
    assert!([N1, N2, N3].contains(&asked[0].to));
}

/// The learn requests queued, as (from, to).
fn asks(l: &mut Learner) -> Vec<(u64, u64)> {
    std::iter::from_fn(|| l.poll_transmit())
        .filter_map(|t| match t.message {
            Message::LearnRequest(r) => Some((r.from, r.to)),
            _ => None,
        })
        .collect()
}

// Contract: a learner far behind asks for the next batches as soon as an
// answer moves its frontier, without waiting for a tick, keeping several
// batches in flight; `hold` stops every ask until released; `caught_up`
// says whether it is within the slack of the newest decision it heard of.
#[test]
fn a_learner_far_behind_pipelines_its_asks_and_holds_them_when_told() {
    let t0 = Instant::now();
    let b = Params::default().recovery_batch;
    let mut l = learner(t0);
    l.handle_message(t0, N1, decide(100 * b, Value::Skip(1)));
    assert!(!l.caught_up(b));
    l.handle_timeout(t0);
    let t1 = t0 + Params::default().recovery_timeout + Duration::from_millis(1);
    l.handle_timeout(t1);
    assert_eq!(asks(&mut l), [(0, b)]);
    l.handle_message(t1, N1, decide(0, Value::Skip(1)));
    let ahead = asks(&mut l);
    assert!(ahead.len() > 1, "several batches ahead at once: {ahead:?}");
    assert!(
        ahead.windows(2).all(|w| w[0].1 == w[1].0) && ahead[0].0 == b,
        "consecutive, from the end of the first ask: {ahead:?}"
    );
    l.hold(R, true);
    for i in 1..b {
        l.handle_message(t1, N1, decide(i, Value::Skip(1)));
    }
    l.handle_timeout(t1 + Duration::from_secs(1));
    assert_eq!(asks(&mut l), [], "held: no asks");
    l.hold(R, false);
    l.handle_message(t1, N1, decide(b, Value::Skip(1)));
    l.handle_timeout(t1 + Duration::from_secs(2));
    assert!(!asks(&mut l).is_empty(), "released: it asks again");
    assert!(!l.caught_up(b));
    for i in b + 1..=100 * b {
        l.handle_message(t1, N1, decide(i, Value::Skip(1)));
    }
    assert!(l.caught_up(0));
}

// Contract: decisions trimmed before the learner got them are reported as
// lost, and the ring delivers nothing more (the replica must be rebuilt).
#[test]
fn a_trim_past_the_learner_marks_the_ring_lost() {
    let now = Instant::now();
    let mut l = learner(now);
    l.handle_message(
        now,
        N1,
        Message::Trimmed(Trimmed {
            ring: R,
            below: 10,
            position: 10,
        }),
    );
    let lost: Vec<_> = l.lost().collect();
    assert_eq!(lost.len(), 1, "{lost:?}");
    assert_eq!((lost[0].ring, lost[0].below), (R, 10));
    l.handle_message(now, N1, decide(10, Value::Skip(1)));
    assert_eq!(deliveries(&mut l), vec![]);
}

// Contract: a learner resumed from a dedupe image taken at instance `i`
// delivers from `i` on exactly what the learner it was taken from delivers:
// random batches of a few proposers with resends, rising low-water marks,
// skips, and a small dedupe horizon so that sweeps happen between images.
// Images are taken at random points behind the delivered frontier, as a
// replica's engine asks for them. The seed is in every message.
#[test]
fn a_learner_resumed_from_an_image_filters_like_one_that_never_stopped() {
    use psmr_core::proto::{CommandId, ProposerId};
    use rand::{RngExt, SeedableRng};
    use rand_chacha::ChaCha8Rng;
    let params = Params {
        dedupe_horizon: 40,
        ..Params::default()
    };
    for seed in 0..100u64 {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let now = Instant::now();
        let mut values = Vec::new();
        let mut next_seq = [0u64; 3];
        for _ in 0..300 {
            if rng.random_bool(0.2) {
                values.push(Value::Skip(rng.random_range(1..4)));
                continue;
            }
            let commands = (0..rng.random_range(1..5))
                .map(|_| {
                    let p = rng.random_range(0..3);
                    let seq = if rng.random_bool(0.3) {
                        next_seq[p].saturating_sub(rng.random_range(0..6))
                    } else {
                        next_seq[p] += 1;
                        next_seq[p] - 1
                    };
                    psmr_core::proto::Command {
                        id: CommandId {
                            proposer: ProposerId(p as u64),
                            seq,
                        },
                        low_water: next_seq[p].saturating_sub(rng.random_range(3..20)),
                        payload: bytes::Bytes::from(vec![seq as u8]),
                    }
                })
                .collect();
            values.push(Value::batch(commands));
        }
        let feed = |l: &mut Learner, from: usize, to: usize| {
            for (i, v) in values.iter().enumerate().take(to).skip(from) {
                l.handle_message(now, N1, decide(i as u64, v.clone()));
            }
            deliveries(l)
        };
        let mut original = Learner::new(L, &ring(params.clone()), &[R], now).unwrap();
        original.keep_images();
        let mut expected = Vec::new();
        let mut images = Vec::new();
        let mut fed = 0;
        while fed < values.len() {
            let to = (fed + rng.random_range(1..40)).min(values.len());
            expected.extend(feed(&mut original, fed, to));
            fed = to;
            let from = images.last().map_or(0, |(at, _)| *at);
            let at = rng.random_range(from..=fed);
            images.push((at, original.dedupe_image(R, at as u64).unwrap()));
        }
        for (at, image) in images {
            assert_eq!(image.next(), at as u64);
            let mut resumed = Learner::new(L, &ring(params.clone()), &[R], now).unwrap();
            resumed.resume(R, image, now).unwrap();
            assert_eq!(
                feed(&mut resumed, at, values.len()),
                expected[at..],
                "seed {seed} image at {at}"
            );
        }
    }
}

// Contract: an image cannot be taken behind the last one or ahead of what
// was delivered.
#[test]
fn images_only_between_the_last_image_and_the_frontier() {
    let now = Instant::now();
    let mut l = learner(now);
    l.keep_images();
    l.handle_message(now, N1, decide(0, Value::Skip(1)));
    l.handle_message(now, N1, decide(1, Value::Skip(1)));
    assert!(l.dedupe_image(R, 3).is_err(), "only 2 delivered");
    assert_eq!(l.dedupe_image(R, 1).unwrap().next(), 1);
    assert!(l.dedupe_image(R, 0).is_err(), "behind the last image");
    assert_eq!(l.dedupe_image(R, 2).unwrap().next(), 2);
}
