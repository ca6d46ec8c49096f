//! The engines on the B+-tree (issue: "Equivalence tests"): random workloads
//! with 0–100 % dependent commands, K in {1, 2, 3, 4, 8}, random pauses in
//! the worker threads, and for `classes` random reconfiguration points that
//! differ between the two runs; the first run delivers everything before
//! the workers start, the second while they run (batches then also run on
//! the delivering thread). Every engine returns the same responses as the
//! sequential execution of the same delivered streams, with the same Retry
//! set for opt-psmr, and ends with the same digest; two runs with different
//! timings agree.
//!
//! Small fanouts and a preloaded tree make splits, merges and failed safety
//! checks frequent. `PSMR_ENGINE_SEEDS=N` runs N seeds (default 40);
//! `PSMR_ENGINE_SEED=S` replays one.

use std::sync::Arc;
use std::time::Duration;

use psmr_btree::{BTreeService, KvStore, Op, value_of};
use psmr_core::{ClientId, EngineKind, Outcome};
use psmr_replica::workload::{self, CollectSink, Feed, Submission, WorkloadOptions};
use psmr_replica::{EngineConfig, Jitter};
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

fn seeds() -> Vec<u64> {
    psmr_replica::workload::seeds_from_env("PSMR_ENGINE", 40)
}

fn random_op(rng: &mut ChaCha8Rng, keys: u64, dependent: bool) -> Op {
    let k = rng.random_range(0..keys);
    match (dependent, rng.random_range(0..10)) {
        (true, 0) => Op::Scan(k, rng.random_range(0..12)),
        (true, 1..=5) => Op::Insert(k, value_of(rng.random(), rng.random_range(0..24))),
        (true, _) => Op::Delete(k),
        (false, 0..=5) => Op::Read(k),
        (false, _) => Op::Update(k, value_of(rng.random(), rng.random_range(0..24))),
    }
}

#[test]
fn every_engine_matches_sequential_execution() {
    let kinds = [
        EngineKind::Smr,
        EngineKind::Psmr,
        EngineKind::OptPsmr,
        EngineKind::Cbase,
        EngineKind::Classes,
    ];
    let mut retries = 0u64;
    for seed in seeds() {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let kind = kinds[seed as usize % kinds.len()];
        let config = workload::draw_config(&mut rng, kind);
        let threads = config.threads();
        let keys = rng.random_range(100..2000);
        let fanout = rng.random_range(4..=16);
        let dependent = rng.random_range(0..=100) as f64 / 100.0;
        let preload: Vec<(u64, _)> = (0..keys)
            .filter(|k| k % 3 != 0)
            .map(|k| (k, value_of(k, 8)))
            .collect();
        let state = || KvStore::bulk_load(fanout, 0.7, preload.iter().cloned());
        let submissions: Vec<Submission> = (0..rng.random_range(100..600))
            .map(|_| {
                let client = ClientId(rng.random_range(1..=5));
                let is_dependent = rng.random_bool(dependent);
                Submission {
                    client,
                    op: random_op(&mut rng, keys, is_dependent).encode(),
                }
            })
            .collect();
        let options = WorkloadOptions {
            round: rng.random_range(1..=48),
            resend: 0.03,
            seed,
            // Some clients in the sequential fallback: thread commands on g_all.
            to_all: if rng.random_bool(0.3) { 0.5 } else { 0.0 },
        };
        let what = format!(
            "seed={seed} {kind:?} K={threads} fanout={fanout} dependent={dependent} to_all={}",
            options.to_all
        );
        let service = BTreeService::new(keys);
        let streams = workload::build(&service, &service, &config, state(), &submissions, options);
        retries += streams.metrics.retries;
        let expected = workload::canonical(&streams.reference);
        let digest = streams.state.digest();
        let service = Arc::new(service);
        for run in 0..2 {
            let mut config = workload::replica_of(&config, seed * 2 + run);
            config.jitter = Some(Jitter {
                seed: seed * 2 + run,
                max_pause: Duration::from_micros(30),
            });
            let sink = Arc::new(CollectSink::default());
            let (finished, _) = workload::run(
                &service,
                config,
                state(),
                &streams,
                [Feed::Queued, Feed::Live][run as usize],
                seed + run,
                sink.clone(),
            )
            .unwrap_or_else(|e| panic!("{what}: run {run}: {e}"));
            assert_eq!(
                workload::canonical(&sink.take()),
                expected,
                "{what}: run {run} replied differently"
            );
            assert_eq!(
                finished.state.digest(),
                digest,
                "{what}: run {run} ended with another state"
            );
            finished.state.assert_invariants();
        }
    }
    if seeds().len() >= 20 {
        assert!(
            retries > 0,
            "no opt-psmr safety check ever failed: the workloads are too tame"
        );
    }
}

/// opt-psmr with 100 % inserts on full leaves: safety checks fail, the
/// commands come back conservatively, and each is executed exactly once.
#[test]
fn failed_safety_checks_are_retried_and_executed_once() {
    let keys = 4000;
    let config = EngineConfig::new(EngineKind::OptPsmr, 4);
    let service = BTreeService::new(keys);
    let preload: Vec<(u64, _)> = (0..keys).step_by(2).map(|k| (k, value_of(k, 8))).collect();
    let state = || KvStore::bulk_load(8, 1.0, preload.iter().cloned());
    let submissions: Vec<Submission> = (0..600u64)
        .map(|i| Submission {
            client: ClientId(i % 7),
            op: Op::Insert((i * 2_654_435_761 % keys) | 1, value_of(i, 8)).encode(),
        })
        .collect();
    let options = WorkloadOptions {
        round: 32,
        ..WorkloadOptions::default()
    };
    let streams = workload::build(&service, &service, &config, state(), &submissions, options);
    assert!(
        streams.metrics.retries > 50,
        "retries: {}",
        streams.metrics.retries
    );
    let sink = Arc::new(CollectSink::default());
    let (finished, _) = workload::run(
        &Arc::new(service),
        config,
        state(),
        &streams,
        Feed::Live,
        1,
        sink.clone(),
    )
    .unwrap();
    let replies = sink.take();
    let done = replies
        .iter()
        .filter(|r| matches!(r.outcome, Outcome::Done(_)))
        .count();
    let retry = replies
        .iter()
        .filter(|r| r.outcome == Outcome::Retry)
        .count();
    assert_eq!(done, 600, "every insert answered once");
    assert_eq!(retry as u64, streams.metrics.retries);
    assert_eq!(finished.state.len(), preload.len() + 600);
}
