//! The load generator of `psmr client load` (and `psmr local --load`).
//!
//! Closed loop: `clients` SDK clients, each keeping `in_flight` calls
//! outstanding. Open loop (`--rate`): calls start at a fixed rate whatever the
//! replies; latency is measured from when a call was due, so a slow system
//! is not flattered by calls it delayed (coordinated omission). Keys are
//! uniform over the key space; a share `dependent` of the calls are inserts
//! and deletes (half each), the rest reads.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use psmr_btree::{BTreeClient, BTreeError};
use psmr_client::{ClientError, ClientOptions};
use psmr_replica::cluster::ClusterConfig;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;
use thiserror::Error;
use tokio::sync::Mutex;

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
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let q = |p: f64| self.latency.value_at_quantile(p) as f64 / 1000.0;
        write!(
            f,
            "throughput {:.0} commands/s ({} completed, {} failed in {:.1} s); latency ms: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; retries {}",
            self.throughput(),
            self.completed,
            self.failed,
            self.elapsed.as_secs_f64(),
            q(0.5),
            q(0.99),
            q(0.999),
            self.latency.max() as f64 / 1000.0,
            self.retries
        )
    }
}

struct Tally {
    completed: u64,
    failed: u64,
    latency: Histogram<u64>,
}

/// Runs the load against `cluster`.
pub(crate) async fn run(
    cluster: &ClusterConfig,
    options: &LoadOptions,
) -> Result<Report, LoadError> {
    if !(0.0..=1.0).contains(&options.dependent) {
        return Err(LoadError::Dependent(options.dependent));
    }
    let clients = options.clients.max(1);
    let mut trees = Vec::with_capacity(clients);
    for _ in 0..clients {
        trees.push(BTreeClient::connect(cluster, ClientOptions::default()).await?);
    }
    let tally = Arc::new(Mutex::new(Tally {
        completed: 0,
        failed: 0,
        latency: Histogram::new_with_bounds(1, 60_000_000, 3).expect("valid bounds"),
    }));
    let start = Instant::now();
    let measure_from = start + options.warmup;
    let end = measure_from + options.duration;
    let key_space = cluster.service.key_space();
    let mut tasks = Vec::new();
    match options.rate {
        Some(rate) => tasks.push(tokio::spawn(open_loop(
            trees.clone(),
            rate,
            options.clone(),
            key_space,
            measure_from,
            end,
            tally.clone(),
        ))),
        None => {
            for (c, tree) in trees.iter().enumerate() {
                for slot in 0..options.in_flight.max(1) {
                    let seed = options.seed ^ ((c * 1_000 + slot) as u64);
                    let job = closed_loop(
                        tree.clone(),
                        seed,
                        options.dependent,
                        key_space,
                        measure_from,
                        end,
                        tally.clone(),
                    );
                    tasks.push(tokio::spawn(job));
                }
            }
        }
    }
    for task in tasks {
        let _ = task.await;
    }
    let retries = trees
        .iter()
        .map(|t| {
            t.inner()
                .stats()
                .retries
                .load(std::sync::atomic::Ordering::Relaxed)
        })
        .sum();
    let tally = Arc::try_unwrap(tally)
        .map_err(|_| ())
        .expect("tasks finished")
        .into_inner();
    Ok(Report {
        completed: tally.completed,
        failed: tally.failed,
        elapsed: options.duration,
        latency: tally.latency,
        retries,
    })
}

async fn one_call(
    tree: &BTreeClient,
    rng: &mut ChaCha8Rng,
    dependent: f64,
    key_space: u64,
) -> Result<(), BTreeError> {
    let key = rng.random_range(0..key_space);
    if rng.random_bool(dependent) {
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

async fn record(tally: &Mutex<Tally>, due: Instant, measure_from: Instant, end: Instant, ok: bool) {
    let now = Instant::now();
    if due < measure_from || now > end {
        return;
    }
    let mut t = tally.lock().await;
    if ok {
        t.completed += 1;
        let micros = now.duration_since(due).as_micros().max(1) as u64;
        let _ = t.latency.record(micros.min(60_000_000));
    } else {
        t.failed += 1;
    }
}

async fn closed_loop(
    tree: BTreeClient,
    seed: u64,
    dependent: f64,
    key_space: u64,
    measure_from: Instant,
    end: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    while Instant::now() < end {
        let due = Instant::now();
        let ok = one_call(&tree, &mut rng, dependent, key_space)
            .await
            .is_ok();
        record(&tally, due, measure_from, end, ok).await;
    }
}

async fn open_loop(
    trees: Vec<BTreeClient>,
    rate: u64,
    options: LoadOptions,
    key_space: u64,
    measure_from: Instant,
    end: Instant,
    tally: Arc<Mutex<Tally>>,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(options.seed);
    let mut sent = 0u64;
    loop {
        let due = start + interval * sent as u32;
        if due >= end {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let tree = trees[sent as usize % trees.len()].clone();
        let seed = rng.random::<u64>();
        let tally = tally.clone();
        let dependent = options.dependent;
        tokio::spawn(async move {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            let ok = one_call(&tree, &mut rng, dependent, key_space)
                .await
                .is_ok();
            record(&tally, due, measure_from, end, ok).await;
        });
        sent += 1;
    }
    tokio::time::sleep_until((end + Duration::from_secs(1)).into()).await;
}
