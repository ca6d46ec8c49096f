//! The linearizability checker against a brute-force one on thousands of
//! small random histories of a key-value store (with unknown outcomes), and
//! on hand-written violations: a stale read, a lost write, a value never
//! written, a read going back in time.
//!
//! Random histories print their seed; `PSMR_LIN_SEED=N` replays one run.

#![allow(clippy::print_stdout)]

use std::time::Duration;

use psmr_client::linearizability::{KeyValue as Kv, KvOp as Op, Operation, Verdict, check};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

type History = Vec<Operation<Op, Option<u64>>>;

/// Whether some order of the operations (each unknown one included or not)
/// respects real time and the sequential specification.
fn brute_force(history: &History) -> bool {
    let n = history.len();
    let pending: Vec<usize> = (0..n).filter(|&i| history[i].result.is_none()).collect();
    for mask in 0..(1u32 << pending.len()) {
        let chosen: Vec<usize> = (0..n)
            .filter(|&i| match pending.iter().position(|&p| p == i) {
                Some(bit) => mask & (1 << bit) != 0,
                None => true,
            })
            .collect();
        if permutations_fit(history, &chosen, &mut Vec::new(), &mut vec![false; n]) {
            return true;
        }
    }
    false
}

fn permutations_fit(
    history: &History,
    chosen: &[usize],
    order: &mut Vec<usize>,
    used: &mut [bool],
) -> bool {
    if order.len() == chosen.len() {
        let mut state = std::collections::BTreeMap::new();
        return order.iter().all(|&i| {
            let op = history[i].input;
            let (after, answer) = op.apply(state.get(&op.key()).copied());
            match after {
                Some(v) => state.insert(op.key(), v),
                None => state.remove(&op.key()),
            };
            history[i]
                .result
                .as_ref()
                .is_none_or(|(_, out)| *out == answer)
        });
    }
    for &i in chosen {
        if used[i] {
            continue;
        }
        // Real time: nothing left may have returned before i was called.
        let blocked = chosen.iter().any(|&j| {
            !used[j]
                && j != i
                && history[j]
                    .result
                    .as_ref()
                    .is_some_and(|(ret, _)| *ret < history[i].call)
        });
        if blocked {
            continue;
        }
        used[i] = true;
        order.push(i);
        if permutations_fit(history, chosen, order, used) {
            return true;
        }
        order.pop();
        used[i] = false;
    }
    false
}

/// A history that happened: each operation takes effect at a random point
/// of its interval (an unknown one at any point after its call, or never);
/// then, half the time, one answer is changed (which may or may not make it
/// non-linearizable: the brute force says).
fn random_history(rng: &mut ChaCha8Rng, n: usize, keys: u64) -> History {
    let mut ops: Vec<(Operation<Op, Option<u64>>, u64, bool)> = (0..n)
        .map(|c| {
            let key = rng.random_range(0..keys);
            let value = rng.random_range(1..4u64);
            let input = match rng.random_range(0..4) {
                0 => Op::Get(key),
                1 => Op::Put(key, value),
                2 => Op::Insert(key, value),
                _ => Op::Delete(key),
            };
            let call = rng.random_range(0..20u64);
            let ret = call + rng.random_range(0..10u64);
            let point = rng.random_range(call..=ret);
            let unknown = rng.random_bool(0.15);
            let happens = !unknown || rng.random_bool(0.5);
            let point = if unknown {
                call + rng.random_range(0..30u64)
            } else {
                point
            };
            let op = Operation {
                client: c as u64,
                input,
                call,
                result: (!unknown).then_some((ret, None)),
            };
            (op, point, happens)
        })
        .collect();
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by_key(|&i| ops[i].1);
    let mut state = std::collections::BTreeMap::new();
    for i in order {
        if !ops[i].2 {
            continue;
        }
        let op = ops[i].0.input;
        let (after, answer) = op.apply(state.get(&op.key()).copied());
        match after {
            Some(v) => state.insert(op.key(), v),
            None => state.remove(&op.key()),
        };
        if let Some((_, out)) = &mut ops[i].0.result {
            *out = answer;
        }
    }
    let mut history: History = ops.into_iter().map(|(op, _, _)| op).collect();
    if rng.random_bool(0.5) {
        let i = rng.random_range(0..n);
        if let Some((_, out)) = &mut history[i].result {
            *out = match rng.random_range(0..4u64) {
                0 => None,
                v => Some(v),
            };
        }
    }
    history
}

#[test]
fn the_search_agrees_with_brute_force_on_random_histories() {
    let seed = std::env::var("PSMR_LIN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(rand::random);
    println!("seed={seed} (replay with PSMR_LIN_SEED={seed})");
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (mut linearizable, mut violations) = (0, 0);
    for round in 0..4000 {
        let n = rng.random_range(1..=7);
        let keys = rng.random_range(1..=2);
        let history = random_history(&mut rng, n, keys);
        let truth = brute_force(&history);
        let verdict = check(&Kv, &history, Duration::from_secs(10));
        match (&verdict, truth) {
            (Verdict::Linearizable, true) => linearizable += 1,
            (Verdict::Violation(_), false) => violations += 1,
            _ => panic!(
                "seed {seed} round {round}: brute force says {truth}, the search {verdict:?}\n{history:#?}"
            ),
        }
    }
    println!("{linearizable} linearizable, {violations} violations");
    assert!(
        linearizable > 500 && violations > 500,
        "both kinds are exercised"
    );
}

fn op(
    client: u64,
    input: Op,
    call: u64,
    ret: u64,
    output: Option<u64>,
) -> Operation<Op, Option<u64>> {
    Operation {
        client,
        input,
        call,
        result: Some((ret, output)),
    }
}

fn violation(history: &History) -> psmr_client::linearizability::Explanation<Op, Option<u64>> {
    match check(&Kv, history, Duration::from_secs(10)) {
        Verdict::Violation(e) => e,
        other => panic!("not found: {other:?}"),
    }
}

#[test]
fn a_stale_read_is_a_violation_explained() {
    // A write of 2 completes, then a read that starts later sees the old 1.
    let history = vec![
        op(1, Op::Insert(7, 1), 0, 1, None),
        op(1, Op::Insert(7, 2), 2, 3, Some(1)),
        op(2, Op::Get(7), 4, 5, Some(1)),
        op(3, Op::Get(8), 0, 9, None),
    ];
    let e = violation(&history);
    assert_eq!(e.partition, 7, "the key is named");
    assert_eq!(
        e.longest.iter().map(|o| o.input).collect::<Vec<_>>(),
        [Op::Insert(7, 1), Op::Insert(7, 2)]
    );
    assert_eq!(
        e.stuck.iter().map(|o| o.input).collect::<Vec<_>>(),
        [Op::Get(7)]
    );
}

#[test]
fn a_lost_write_a_value_never_written_and_time_going_back_are_violations() {
    // Lost write: an acknowledged insert, then reads that never see it.
    let lost = vec![
        op(1, Op::Insert(1, 5), 0, 1, None),
        op(2, Op::Get(1), 2, 3, None),
    ];
    violation(&lost);
    // A value nobody wrote.
    let invented = vec![
        op(1, Op::Insert(1, 5), 0, 1, None),
        op(2, Op::Get(1), 2, 3, Some(6)),
    ];
    violation(&invented);
    // Back in time: two reads during a write, the first sees the new value,
    // the later one (it starts after the first returned) the old.
    let back = vec![
        op(1, Op::Insert(1, 1), 0, 1, None),
        op(1, Op::Insert(1, 2), 2, 10, Some(1)),
        op(2, Op::Get(1), 3, 4, Some(2)),
        op(3, Op::Get(1), 5, 6, Some(1)),
    ];
    violation(&back);
    // The same reads overlapping each other can be ordered: linearizable.
    let overlapping = vec![
        op(1, Op::Insert(1, 1), 0, 1, None),
        op(1, Op::Insert(1, 2), 2, 10, Some(1)),
        op(2, Op::Get(1), 3, 6, Some(2)),
        op(3, Op::Get(1), 4, 6, Some(1)),
    ];
    assert_eq!(
        check(&Kv, &overlapping, Duration::from_secs(1)),
        Verdict::Linearizable
    );
}

#[test]
fn an_unknown_outcome_may_or_may_not_have_taken_effect() {
    let timed_out = |v| Operation {
        client: 1,
        input: Op::Insert(1, v),
        call: 0,
        result: None,
    };
    // Seen by a later read: it took effect.
    let seen = vec![timed_out(5), op(2, Op::Get(1), 10, 11, Some(5))];
    assert_eq!(
        check(&Kv, &seen, Duration::from_secs(1)),
        Verdict::Linearizable
    );
    // Not seen: it did not (yet).
    let unseen = vec![timed_out(5), op(2, Op::Get(1), 10, 11, None)];
    assert_eq!(
        check(&Kv, &unseen, Duration::from_secs(1)),
        Verdict::Linearizable
    );
    // Seen, then not seen by a later read: a violation (a delete never happened).
    let flicker = vec![
        timed_out(5),
        op(2, Op::Get(1), 10, 11, Some(5)),
        op(2, Op::Get(1), 12, 13, None),
    ];
    violation(&flicker);
}

#[test]
fn a_search_out_of_time_says_unknown() {
    // 30 writes of distinct values whose outcome is unknown, then a read of
    // a value none wrote: every order of every subset of the writes must be
    // tried (2^30 linearized sets) before the search could call it a
    // violation. A zero budget stops it at its first look at the clock.
    let mut history: History = (0..30u64)
        .map(|i| Operation {
            client: i,
            input: Op::Insert(1, i),
            call: 0,
            result: None,
        })
        .collect();
    history.push(op(99, Op::Get(1), 10, 11, Some(999)));
    history.push(op(98, Op::Get(2), 10, 11, None));
    match check(&Kv, &history, Duration::ZERO) {
        Verdict::Unknown { undecided } => assert_eq!(undecided, vec![1]),
        other => panic!("expected unknown, got {other:?}"),
    }
}
