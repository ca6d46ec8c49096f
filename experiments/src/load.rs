//! The load generator of `psmr client load` (and `psmr local --load`).
//!
//! Closed loop: `clients` SDK clients, each keeping `in_flight` calls
//! outstanding. Open loop (`--rate`): calls start at a fixed rate whatever the
//! replies; latency is measured from when a call was due, so a slow system
//! is not flattered by calls it delayed (coordinated omission). Keys are
//! uniform over the key space; a share `dependent` of the calls are inserts
//! and deletes (half each), the rest reads.

use std::fmt;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use psmr_btree::{BTreeClient, BTreeError};
use psmr_client::{ClientError, ClientOptions};
use psmr_replica::cluster::ClusterConfig;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;

/// Options of the load generator.
#[derive(clap::Args, Clone, Debug)]
pub(crate) struct LoadOptions {
    /// How long to measure.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub(crate) duration: Duration,
    /// Load before measuring.
    #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
    pub(crate) warmup: Duration,
    /// SDK clients (closed loop).
    #[arg(long, default_value_t = 4)]
    pub(crate) clients: usize,
    /// Calls in flight per client (closed loop).
    #[arg(long, default_value_t = 32)]
    pub(crate) in_flight: usize,
    /// Calls per second (open loop); closed loop when absent.
    #[arg(long)]
    pub(crate) rate: Option<u64>,
    /// Share of inserts and deletes, 0 to 1.
    #[arg(long, default_value_t = 0.0)]
    pub(crate) dependent: f64,
    /// Seed of the keys and operations.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
}

/// Why the load generator failed.
#[derive(Debug, Error)]
pub(crate) enum LoadError {
    /// A client could not connect.
    #[error(transparent)]
    Connect(#[from] ClientError),
    /// `--dependent` is outside 0..=1.
    #[error("--dependent must be between 0 and 1, not {0}")]
    Dependent(f64),
}

/// What a load run measured.
pub(crate) struct Report {
    /// Calls answered during the measured interval.
    pub(crate) completed: u64,
    /// Calls that failed during the measured interval.
    pub(crate) failed: u64,
    /// Length of the measured interval.
    pub(crate) elapsed: Duration,
    /// Latencies in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Failed safety checks retried by the clients.
    pub(crate) retries: u64,
}

impl Report {
    /// Answered calls per second.
    pub(crate) fn throughput(&self) -> f64 {
        self.completed as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// A latency quantile in milliseconds.
    pub(crate) fn latency_ms(&self, quantile: f64) -> f64 {
        self.latency.value_at_quantile(quantile) as f64 / 1000.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throughput {:.0} commands/s ({} completed, {} failed in {:.1} s); latency ms: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; retries {}",
            self.throughput(),
            self.completed,
            self.failed,
            self.elapsed.as_secs_f64(),
            self.latency_ms(0.5),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency.max() as f64 / 1000.0,
            self.retries
        )
    }
}

/// Counts and latencies of one task (merged at the end: no lock per call).
///
/// Latencies are kept as a plain list and go into a histogram only at the
/// end: hundreds of tasks each writing its own histogram (hundreds of KB
/// each) missed the cache on every call.
#[derive(Default)]
struct Tally {
    completed: u64,
    failed: u64,
    /// Microseconds.
    latencies: Vec<u32>,
}

impl Tally {
    /// Records a call that was due at `due`, if it falls in the measured interval.
    fn note(&mut self, window: &Window, due: Instant, ok: bool) {
        let now = Instant::now();
        if due < window.from || now > window.end {
            return;
        }
        if ok {
            self.completed += 1;
            let micros = now
                .duration_since(due)
                .as_micros()
                .clamp(1, MAX_LATENCY_MICROS);
            self.latencies.push(micros as u32);
        } else {
            self.failed += 1;
        }
    }

    fn merge(&mut self, mut other: Tally) {
        self.completed += other.completed;
        self.failed += other.failed;
        self.latencies.append(&mut other.latencies);
    }

    /// The latencies as a histogram.
    fn histogram(&self) -> Histogram<u64> {
        let mut histogram =
            Histogram::new_with_bounds(1, MAX_LATENCY_MICROS as u64, 3).expect("valid bounds");
        for &micros in &self.latencies {
            let _ = histogram.record(u64::from(micros));
        }
        histogram
    }
}

/// Latencies above a minute are recorded as a minute.
const MAX_LATENCY_MICROS: u128 = 60_000_000;

/// The measured interval.
#[derive(Clone, Copy)]
struct Window {
    from: Instant,
    end: Instant,
}

/// What every call draws from.
#[derive(Clone, Copy)]
struct Mix {
    dependent: f64,
    key_space: u64,
}

/// Runs the load against `cluster`.
pub(crate) async fn run(
    cluster: &ClusterConfig,
    options: &LoadOptions,
) -> Result<Report, LoadError> {
    if !(0.0..=1.0).contains(&options.dependent) {
        return Err(LoadError::Dependent(options.dependent));
    }
    let mut trees = Vec::with_capacity(options.clients.max(1));
    for _ in 0..options.clients.max(1) {
        trees.push(BTreeClient::connect(cluster, ClientOptions::default()).await?);
    }
    let start = Instant::now();
    let window = Window {
        from: start + options.warmup,
        end: start + options.warmup + options.duration,
    };
    let mix = Mix {
        dependent: options.dependent,
        key_space: cluster.service.key_space(),
    };
    let tally = match options.rate {
        Some(rate) => open_loop(&trees, rate, options.seed, mix, window).await,
        None => closed_loops(&trees, options, mix, window).await,
    };
    let retries = trees
        .iter()
        .map(|t| {
            t.inner()
                .stats()
                .retries
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    Ok(Report {
        completed: tally.completed,
        failed: tally.failed,
        elapsed: options.duration,
        latency: tally.histogram(),
        retries,
    })
}

async fn one_call(tree: &BTreeClient, rng: &mut ChaCha8Rng, mix: Mix) -> Result<(), BTreeError> {
    let key = rng.random_range(0..mix.key_space);
    if rng.random_bool(mix.dependent) {
        if rng.random_bool(0.5) {
            tree.insert(key, key).await?;
        } else {
            tree.delete(key).await?;
        }
    } else {
        tree.get(key).await?;
    }
    Ok(())
}

async fn closed_loops(
    trees: &[BTreeClient],
    options: &LoadOptions,
    mix: Mix,
    window: Window,
) -> Tally {
    let mut tasks = Vec::new();
    for (c, tree) in trees.iter().enumerate() {
        for slot in 0..options.in_flight.max(1) {
            let seed = options.seed ^ ((c * 1_000 + slot) as u64);
            let tree = tree.clone();
            tasks.push(tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                let mut tally = Tally::default();
                while Instant::now() < window.end {
                    let due = Instant::now();
                    let ok = one_call(&tree, &mut rng, mix).await.is_ok();
                    tally.note(&window, due, ok);
                }
                tally
            }));
        }
    }
    let mut total = Tally::default();
    for task in tasks {
        if let Ok(part) = task.await {
            total.merge(part);
        }
    }
    total
}

async fn open_loop(trees: &[BTreeClient], rate: u64, seed: u64, mix: Mix, window: Window) -> Tally {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let total = Arc::new(Mutex::new(Tally::default()));
    let mut tasks = Vec::new();
    for sent in 0u32.. {
        let due = start + interval * sent;
        if due >= window.end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let tree = trees[sent as usize % trees.len()].clone();
        let (total, seed) = (total.clone(), rng.random::<u64>());
        tasks.push(tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let ok = one_call(&tree, &mut rng, mix).await.is_ok();
            total
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .note(&window, due, ok);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
    let mut total = total.lock().unwrap_or_else(|e| e.into_inner());
    std::mem::take(&mut *total)
}
