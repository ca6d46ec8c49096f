//! Shared by the engine tests: run an engine on streams and compare it with
//! the sequential reference.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use psmr_core::{ConflictModel, EngineKind, Reply};
use psmr_replica::workload::{self, CollectSink, Feed, Streams};
use psmr_replica::{EngineConfig, ExecMetrics, Jitter};

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
