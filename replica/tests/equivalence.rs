//! Every engine returns the same responses as the sequential execution of
//! the same delivered streams, and ends with the same digest; two runs with
//! different thread timings agree (docs/testing.md, "engines").
//!
//! `PSMR_ENGINE_SEEDS=N` runs N seeds per service (default 40). A failure
//! names its seed: `PSMR_ENGINE_SEED=S` replays it alone.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use psmr_core::{ClientId, ConflictModel, EngineKind, GroupMapping, Service};
use psmr_replica::workload::{self, Submission, WorkloadOptions};
use psmr_replica::{EngineConfig, Policy};
use psmr_services::{
    LinkedList, ListOp, ListService, MAX_FIELDS, NullOp, NullService, TupleModel, TupleService,
    TupleSpace,
};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seeds() -> Vec<u64> {
    psmr_replica::workload::seeds_from_env("PSMR_ENGINE", 40)
}

/// Runs one seed: a random engine on a random workload, twice.
fn check_seed<S, F>(service: S, state: impl Fn() -> S::State, seed: u64, op: F)
where
    S: ConflictModel + GroupMapping<Op = <S as Service>::Op>,
    F: Fn(&mut ChaCha8Rng, bool) -> Bytes,
{
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let config = common::draw_config(&mut rng);
    let dependent = rng.random_range(0..=100) as f64 / 100.0;
    let clients = rng.random_range(1..=6u64);
    let count = rng.random_range(50..400);
    let submissions = common::submissions(&mut rng, count, clients, dependent, op);
    let options = WorkloadOptions {
        round: rng.random_range(1..=40),
        resend: 0.05,
        seed,
        // Some clients in the sequential fallback: thread commands on g_all.
        to_all: if rng.random_bool(0.3) { 0.5 } else { 0.0 },
    };
    let what = format!(
        "seed={seed} {:?} K={} dependent={dependent} to_all={}",
        config.kind,
        config.threads(),
        options.to_all
    );
    let streams = workload::build(&service, &service, &config, state(), &submissions, options);
    let expected = workload::canonical(&streams.reference);
    let service = Arc::new(service);
    let mut digests = vec![service.digest(&streams.state)];
    for run in 0..2 {
        let (replies, final_state, _) =
            common::run_engine(&service, &config, state(), &streams, seed * 2 + run);
        assert_eq!(
            workload::canonical(&replies),
            expected,
            "{what}: run {run} replied differently"
        );
        digests.push(service.digest(&final_state));
    }
    assert!(
        digests.windows(2).all(|w| w[0] == w[1]),
        "{what}: digests differ: {digests:?}"
    );
}

#[test]
fn null_service_engines_match_sequential_execution() {
    for seed in seeds() {
        check_seed(
            NullService,
            || (),
            seed,
            |rng, _| {
                NullOp {
                    tag: rng.random_range(0..64),
                }
                .encode()
            },
        );
    }
}

#[test]
fn linked_list_engines_match_sequential_execution() {
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
fn tuple_space_engines_match_sequential_execution() {
    let space = || {
        let mut rng = ChaCha8Rng::seed_from_u64(7);
        TupleSpace::from_tuples((0..200).map(|i| {
            let n = i % MAX_FIELDS + 1;
            (0..n).map(|_| rng.random_range(0..3)).collect()
        }))
    };
    for seed in seeds() {
        let model = [TupleModel::Simple, TupleModel::Extended][seed as usize % 2];
        check_seed(TupleService { model }, space, seed, common::tuple_op);
    }
}

#[test]
fn resends_are_answered_from_the_table_not_executed_twice() {
    for kind in [EngineKind::Psmr, EngineKind::Cbase, EngineKind::Classes] {
        let mut config = EngineConfig::new(kind, 3);
        config.min_threads = 1;
        config.initial_threads = 2;
        config.policy = Policy::Random { seed: 3, period: 7 };
        resends_once(config);
    }
}

fn resends_once(config: EngineConfig) {
    let service = ListService;
    let what = format!("{:?}", config.kind);
    let submissions: Vec<Submission> = (0..200)
        .map(|i| Submission {
            client: ClientId(i % 3),
            op: ListOp::Add(i).encode(),
        })
        .collect();
    let options = WorkloadOptions {
        round: 8,
        resend: 0.5,
        seed: 11,
        to_all: 0.0,
    };
    let streams = workload::build(
        &service,
        &service,
        &config,
        LinkedList::new(),
        &submissions,
        options,
    );
    let service = Arc::new(service);
    let (replies, list, metrics) =
        common::run_engine(&service, &config, LinkedList::new(), &streams, 5);
    let from_table: u64 = metrics.iter().map(|m| m.from_table).sum();
    let executed: u64 = metrics.iter().map(|m| m.executed).sum();
    assert!(
        from_table > 50,
        "{what}: resends were answered from the table: {from_table}"
    );
    assert_eq!(executed, 200, "{what}: every add executed exactly once");
    assert_eq!(list.len(), 200, "{what}");
    assert_eq!(replies.len() as u64, executed + from_table, "{what}");
}

/// The list, with a class map that sends every read to thread 7.
struct ReadsOnSeven;

impl Service for ReadsOnSeven {
    type State = LinkedList;
    type Op = ListOp;
    type Violation = <ListService as Service>::Violation;

    fn id(&self) -> psmr_core::ServiceId {
        ListService.id()
    }
    fn decode(&self, op: &[u8]) -> Option<ListOp> {
        ListService.decode(op)
    }
    fn execute(&self, state: &mut LinkedList, op: &ListOp) -> Bytes {
        ListService.execute(state, op)
    }
    fn execute_shared(
        &self,
        state: &LinkedList,
        lane: psmr_core::Lane,
        op: &ListOp,
    ) -> Result<Bytes, Self::Violation> {
        ListService.execute_shared(state, lane, op)
    }
    fn safety_check(&self, state: &LinkedList, lane: psmr_core::Lane, op: &ListOp) -> bool {
        ListService.safety_check(state, lane, op)
    }
    fn digest(&self, state: &LinkedList) -> u64 {
        ListService.digest(state)
    }

    type Image = Vec<u64>;

    fn capture(&self, state: &LinkedList) -> Vec<u64> {
        ListService.capture(state)
    }

    fn write_image(&self, image: &Vec<u64>, out: &mut dyn std::io::Write) -> std::io::Result<()> {
        ListService.write_image(image, out)
    }

    fn read_image(&self, input: &mut dyn std::io::Read) -> std::io::Result<LinkedList> {
        ListService.read_image(input)
    }
}

impl GroupMapping for ReadsOnSeven {
    type Op = ListOp;
    fn conservative(&self, op: &ListOp, threads: usize) -> psmr_core::Group {
        ListService.conservative(op, threads)
    }
    fn optimistic(&self, op: &ListOp, threads: usize) -> psmr_core::Group {
        ListService.optimistic(op, threads)
    }
}

impl ConflictModel for ReadsOnSeven {
    fn placement(&self, op: &ListOp, lanes: usize) -> psmr_core::Placement {
        ListService.placement(op, lanes)
    }
    fn classes(&self, lanes: usize) -> usize {
        ListService.classes(lanes)
    }
    fn class(&self, op: &ListOp, lanes: usize) -> psmr_core::ClassId {
        ListService.class(op, lanes)
    }
    fn class_conflicts(&self, a: usize, b: usize) -> bool {
        ListService.class_conflicts(a, b)
    }
    fn threads_of(&self, class: usize, threads: usize) -> psmr_core::ThreadSet {
        match class {
            0 => psmr_core::ThreadSet::one(7),
            _ => psmr_core::ThreadSet::all(threads),
        }
    }
}

/// Algorithm 3: a class mapped to a thread that is not active runs on every
/// active thread, synchronized; the inactive threads execute nothing.
#[test]
fn a_class_naming_an_inactive_thread_runs_on_all_active_threads() {
    let mut config = EngineConfig::new(EngineKind::Classes, 8);
    (config.min_threads, config.initial_threads) = (2, 2);
    let submissions: Vec<Submission> = (0..300)
        .map(|i| Submission {
            client: ClientId(i % 4),
            op: match i % 3 {
                0 => ListOp::Add(i),
                _ => ListOp::Contains(i / 2),
            }
            .encode(),
        })
        .collect();
    let streams = workload::build(
        &ReadsOnSeven,
        &ReadsOnSeven,
        &config,
        LinkedList::new(),
        &submissions,
        WorkloadOptions::default(),
    );
    let service = Arc::new(ReadsOnSeven);
    let (replies, list, metrics) =
        common::run_engine(&service, &config, LinkedList::new(), &streams, 9);
    assert_eq!(
        workload::canonical(&replies),
        workload::canonical(&streams.reference)
    );
    assert_eq!(list.len(), 100);
    let executed: Vec<u64> = metrics.iter().map(|m| m.executed).collect();
    assert_eq!(
        executed[0], 300,
        "the lowest active thread ran everything: {executed:?}"
    );
    assert!(executed[1..].iter().all(|&e| e == 0), "{executed:?}");
    assert!(
        metrics[1].syncs >= 300,
        "thread 1 met thread 0 for every command"
    );
}
