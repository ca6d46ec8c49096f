//! Shared by the engine tests: run an engine on streams and compare it with
//! the sequential reference.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use psmr_core::{ClientId, ConflictModel, EngineKind, Reply};
use psmr_replica::workload::{self, CollectSink, Feed, Streams, Submission};
use psmr_replica::{EngineConfig, ExecMetrics, Jitter};
use psmr_services::{ListOp, MAX_FIELDS, TupleOp};
use rand::RngExt;
use rand_chacha::ChaCha8Rng;

/// Runs `config` on `streams` from `state`, with thread jitter, feed order
/// and random reconfiguration points from `seed`; an odd `seed` delivers
/// while the workers run (so that batches also run inline), an even one
/// before they start.
pub(crate) fn run_engine<S: ConflictModel>(
    service: &Arc<S>,
    config: &EngineConfig,
    state: S::State,
    streams: &Streams<S::State>,
    seed: u64,
) -> (Vec<Reply>, S::State, Vec<ExecMetrics>) {
    let mut config = workload::replica_of(config, seed);
    config.jitter = Some(Jitter {
        seed,
        max_pause: Duration::from_micros(50),
    });
    let sink = Arc::new(CollectSink::default());
    let (finished, _) = workload::run(
        service,
        config,
        state,
        streams,
        feed(seed),
        seed,
        sink.clone(),
    )
    .expect("the engine runs");
    (sink.take(), finished.state, finished.metrics)
}

/// How seed `seed` delivers.
pub(crate) fn feed(seed: u64) -> Feed {
    match seed % 2 {
        0 => Feed::Queued,
        _ => Feed::Live,
    }
}

/// Every engine.
pub(crate) const KINDS: [EngineKind; 5] = [
    EngineKind::Smr,
    EngineKind::Psmr,
    EngineKind::OptPsmr,
    EngineKind::Cbase,
    EngineKind::Classes,
];

/// A random engine configuration.
pub(crate) fn draw_config(rng: &mut impl rand::RngExt) -> EngineConfig {
    let kind = KINDS[rng.random_range(0..KINDS.len())];
    workload::draw_config(rng, kind)
}

/// `count` submissions of clients `1..=clients`, each dependent with
/// probability `dependent`, their operations drawn by `op`.
pub(crate) fn submissions(
    rng: &mut ChaCha8Rng,
    count: usize,
    clients: u64,
    dependent: f64,
    op: impl Fn(&mut ChaCha8Rng, bool) -> Bytes,
) -> Vec<Submission> {
    (0..count)
        .map(|_| {
            let client = ClientId(rng.random_range(1..=clients));
            let is_dependent = rng.random_bool(dependent);
            Submission {
                client,
                op: op(rng, is_dependent),
            }
        })
        .collect()
}

/// A linked-list operation: a write if `dependent`, else a read.
pub(crate) fn list_op(rng: &mut ChaCha8Rng, dependent: bool) -> Bytes {
    let x = rng.random_range(0..40);
    match (dependent, rng.random_bool(0.5)) {
        (true, true) => ListOp::Add(x),
        (true, false) => ListOp::Remove(x),
        (false, true) => ListOp::Contains(x),
        (false, false) => ListOp::Get(x),
    }
    .encode()
}

/// A tuple-space operation: a write if `dependent`, else a read.
pub(crate) fn tuple_op(rng: &mut ChaCha8Rng, dependent: bool) -> Bytes {
    let fields = rng.random_range(1..=MAX_FIELDS);
    let template = (0..fields)
        .map(|_| rng.random_bool(0.6).then(|| rng.random_range(0..3)))
        .collect();
    let tuple = |rng: &mut ChaCha8Rng, n| (0..n).map(|_| rng.random_range(0..3)).collect();
    match (dependent, rng.random_range(0..3)) {
        (false, _) => TupleOp::Rdp(template),
        (true, 0) => TupleOp::Out(tuple(rng, fields)),
        (true, 1) => TupleOp::Inp(template),
        (true, _) => {
            let n = rng.random_range(1..=MAX_FIELDS);
            TupleOp::Cas(template, tuple(rng, n))
        }
    }
    .encode()
}
