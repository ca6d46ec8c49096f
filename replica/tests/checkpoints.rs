//! Checkpoints at a consistent cut (docs/ARCHITECTURE.md, "Checkpoints"):
//! an engine resumed from any checkpoint it took, and fed every ring from
//! the checkpoint's cut on, answers what the engine that never stopped
//! answered after the cut and ends in the same state. Every engine, random
//! configurations (K, M, batch synchronization, inline execution, classes
//! policies), markers at random `g_all` instances, resends answered from
//! the tables across the cut.
//!
//! `PSMR_CHECKPOINT_SEEDS=N` runs N seeds per service (default 30);
//! `PSMR_CHECKPOINT_SEED=S` replays seed S alone.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc;

use bytes::Bytes;
use psmr_core::proto::{Command, CommandId, Instance, ProposerId, RingId, Value};
use psmr_core::{Answerers, ConflictModel, GroupMapping, Marker, Reply, Service};
use psmr_replica::engine::{Captured, EngineImage, Resume, Start};
use psmr_replica::workload::{self, CollectSink, WorkloadOptions};
use psmr_replica::{Engine, EngineConfig, Jitter};
use psmr_services::{LinkedList, ListService, TupleModel, TupleService, TupleSpace};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seeds() -> Vec<u64> {
    workload::seeds_from_env("PSMR_CHECKPOINT", 30)
}

fn marker(number: u64) -> Command {
    Command {
        id: CommandId {
            proposer: ProposerId(u64::MAX),
            seq: number,
        },
        low_water: 0,
        payload: Marker { number }.encode(),
    }
}

/// Puts markers 1, 2, ... into random instances of `g_all`, at most one
/// per instance, in instance order; returns how many.
fn plant_markers(ring: &mut [(Instance, Value)], rng: &mut ChaCha8Rng) -> u64 {
    let share = rng.random_range(0.02..0.3);
    let mut number = 0;
    for (_, value) in ring.iter_mut() {
        if !rng.random_bool(share) {
            continue;
        }
        number += 1;
        *value = match value {
            Value::Skip(n) => match Value::batch(vec![marker(number)]) {
                Value::Batch(b) => Value::Batch(b.spanning(*n)),
                skip => skip,
            },
            Value::Batch(b) => {
                let mut commands = b.commands().to_vec();
                let at = rng.random_range(0..=commands.len());
                commands.insert(at, marker(number));
                match Value::batch(commands) {
                    Value::Batch(new) => Value::Batch(new.spanning(b.span())),
                    skip => skip,
                }
            }
        };
    }
    number
}

fn clients_replies(replies: Vec<Reply>) -> Vec<Reply> {
    replies
        .into_iter()
        .filter(|r| r.answerers != Answerers::Nobody)
        .collect()
}

/// Starts an engine from `start`, delivers `rings` (interleaved by `seed`),
/// finishes it: its replies to clients, final state, and checkpoints.
fn run<S: ConflictModel>(
    service: &Arc<S>,
    config: &EngineConfig,
    start: Start<S::State>,
    rings: &BTreeMap<RingId, Vec<(Instance, Value)>>,
    seed: u64,
) -> (Vec<Reply>, S::State, Vec<Captured<S::Image>>) {
    let mut config = config.clone();
    config.jitter = Some(Jitter {
        seed,
        max_pause: std::time::Duration::from_micros(20),
    });
    let sink = Arc::new(CollectSink::default());
    let (tx, rx) = mpsc::channel();
    let engine = Engine::start_with(service.clone(), start, config, sink.clone(), Some(tx))
        .expect("the engine starts");
    workload::feed_rings(&engine, rings, seed).unwrap();
    let finished = engine.finish().expect("the engine finishes");
    let checkpoints = rx.try_iter().collect();
    (clients_replies(sink.take()), finished.state, checkpoints)
}

/// Writes a checkpoint out and reads it back as a replica restarting from
/// its file would.
fn reread<S: Service>(service: &S, captured: &Captured<S::Image>) -> Resume<S::State> {
    let engine: EngineImage =
        postcard::from_bytes(&postcard::to_allocvec(&captured.engine).unwrap()).unwrap();
    let mut bytes = Vec::new();
    service.write_image(&captured.image, &mut bytes).unwrap();
    let state = service.read_image(&mut bytes.as_slice()).unwrap();
    Resume { engine, state }
}

fn check_seed<S, F>(service: S, state: impl Fn() -> S::State, seed: u64, op: F)
where
    S: ConflictModel + GroupMapping<Op = <S as Service>::Op>,
    F: Fn(&mut ChaCha8Rng, bool) -> Bytes,
{
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = common::draw_config(&mut rng);
    let dependent = rng.random_range(0..=100) as f64 / 100.0;
    let clients = rng.random_range(1..=5u64);
    let count = rng.random_range(50..300);
    let submissions = common::submissions(&mut rng, count, clients, dependent, op);
    let options = WorkloadOptions {
        round: rng.random_range(1..=30),
        resend: 0.1,
        seed,
        to_all: 0.0,
    };
    let mut streams = workload::build(&service, &service, &config, state(), &submissions, options);
    let all = config.all_ring;
    let markers = plant_markers(streams.rings.get_mut(&all).unwrap(), &mut rng);
    let what = format!(
        "seed={seed} {:?} K={} M={} markers={markers}",
        config.kind,
        config.threads(),
        config.merge_m
    );
    let service = Arc::new(service);
    let (replies, final_state, checkpoints) = run(
        &service,
        &config,
        Start::Fresh(state()),
        &streams.rings,
        seed,
    );
    assert_eq!(
        workload::canonical(&replies),
        workload::canonical(&streams.reference),
        "{what}: markers changed what clients get"
    );
    let numbers: Vec<u64> = checkpoints.iter().map(|c| c.engine.number).collect();
    assert_eq!(
        numbers,
        (1..=markers).collect::<Vec<_>>(),
        "{what}: one checkpoint per marker"
    );
    let digest = service.digest(&final_state);
    let all_replies = workload::canonical(&replies);
    for captured in &checkpoints {
        let number = captured.engine.number;
        let next: BTreeMap<RingId, Instance> =
            captured.engine.next_instances().into_iter().collect();
        let rest: BTreeMap<RingId, Vec<(Instance, Value)>> = streams
            .rings
            .iter()
            .map(|(&r, s)| {
                (
                    r,
                    s.iter().filter(|(i, _)| *i >= next[&r]).cloned().collect(),
                )
            })
            .collect();
        let expected_count: usize = rest
            .values()
            .flatten()
            .map(|(_, v)| {
                v.commands()
                    .iter()
                    .filter(|c| Marker::decode(&c.payload).is_none())
                    .count()
            })
            .sum();
        let resume = Start::Resume(reread(&*service, captured));
        let (after, resumed_state, later) = run(&service, &config, resume, &rest, seed + number);
        assert_eq!(
            service.digest(&resumed_state),
            digest,
            "{what}: resumed from checkpoint {number}, another final state"
        );
        assert_eq!(
            after.len(),
            expected_count,
            "{what}: checkpoint {number}: replies after the cut"
        );
        let mut left = all_replies.clone();
        for reply in workload::canonical(&after) {
            let at = left.iter().position(|r| *r == reply).unwrap_or_else(|| {
                panic!("{what}: resumed from checkpoint {number}, a reply the original never gave: {reply:?}")
            });
            left.remove(at);
        }
        let later: Vec<u64> = later.iter().map(|c| c.engine.number).collect();
        assert_eq!(
            later,
            (number + 1..=markers).collect::<Vec<_>>(),
            "{what}: later checkpoints"
        );
    }
}

#[test]
fn an_engine_resumed_from_a_checkpoint_goes_on_as_the_one_that_never_stopped_list() {
    for seed in seeds() {
        check_seed(
            ListService,
            || LinkedList::from_values(0..20),
            seed,
            common::list_op,
        );
    }
}

#[test]
fn an_engine_resumed_from_a_checkpoint_goes_on_as_the_one_that_never_stopped_tuples() {
    for seed in seeds() {
        let model = [TupleModel::Simple, TupleModel::Extended][seed as usize % 2];
        check_seed(
            TupleService { model },
            TupleSpace::default,
            seed + 10_000,
            common::tuple_op,
        );
    }
}
