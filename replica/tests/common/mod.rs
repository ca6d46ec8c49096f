//! Shared by the engine tests: run an engine on streams and compare it with
//! the sequential reference.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use psmr_replica::workload::{self, CollectSink, Streams};
use psmr_replica::{EngineConfig, EngineKind, ExecMetrics, Jitter, Reply, Service};

/// Runs `config` on `streams` from `state`, with thread jitter and feed order from `seed`.
pub(crate) fn run_engine<S: Service>(
    service: &Arc<S>,
    config: &EngineConfig,
    state: S::State,
    streams: &Streams<S::State>,
    seed: u64,
) -> (Vec<Reply>, S::State, Vec<ExecMetrics>) {
    let mut config = config.clone();
    config.jitter = Some(Jitter {
        seed,
        max_pause: Duration::from_micros(50),
    });
    let sink = Arc::new(CollectSink::default());
    let (finished, _) = workload::run(service, config, state, streams, seed, sink.clone())
        .expect("the engine runs");
    (sink.take(), finished.state, finished.metrics)
}

/// A random engine configuration.
pub(crate) fn draw_config(rng: &mut impl rand::RngExt) -> EngineConfig {
    let kinds = [EngineKind::Smr, EngineKind::Psmr, EngineKind::OptPsmr];
    let kind = kinds[rng.random_range(0..kinds.len())];
    let threads = [1, 2, 3, 4, 8][rng.random_range(0..5)];
    let mut config = EngineConfig::new(kind, threads);
    config.merge_m = rng.random_range(1..=3);
    config.batch_sync = rng.random_bool(0.5);
    config
}
