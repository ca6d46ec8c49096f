//! The load generator of `psmr client load` (and `psmr local --load`).
//!
//! Closed loop: `clients` SDK clients, each keeping `in_flight` calls
//! outstanding. Open loop (`--rate`): calls start at a fixed rate whatever the
//! replies; latency is measured from when a call was due, so a slow system
//! is not flattered by calls it delayed (coordinated omission). Keys are
//! uniform over the key space; a share `dependent` of the calls are inserts
//! (of `--value-size` bytes) and deletes, half each, the rest reads.
//!
//! A report separates the calls whose optimistic guess failed its safety
//! check (opt-psmr's failed commands, answered after a conservative retry)
//! from the calls that passed.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use psmr_btree::{BTreeClient, Op, Response, value_of};
use psmr_client::{ClientError, ClientOptions, ClientStats};
use psmr_core::cluster::ClusterConfig;
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
    #[arg(long, default_value_t = 4, value_parser = at_least_one)]
    pub(crate) clients: usize,
    /// Calls in flight per client (closed loop).
    #[arg(long, default_value_t = 32, value_parser = at_least_one)]
    pub(crate) in_flight: usize,
    /// Calls per second (open loop); closed loop when absent.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    pub(crate) rate: Option<u64>,
    /// Share of inserts and deletes, 0 to 1.
    #[arg(long, default_value_t = 0.0, value_parser = share)]
    pub(crate) dependent: f64,
    /// Seed of the keys and operations.
    #[arg(long, default_value_t = 1)]
    pub(crate) seed: u64,
    /// Every replica answers every call (default: one replica per client).
    #[arg(long)]
    pub(crate) every_replica_answers: bool,
    /// psmr, opt-psmr: each client sends every command to g_all while at
    /// least this share of its last 1,024 commands are mapped there; 1 turns
    /// the fallback off (the papers' P-SMR).
    #[arg(long, default_value_t = ClientOptions::default().sequential_above, value_parser = share)]
    pub(crate) sequential_above: f64,
    /// opt-psmr: each client sends conservatively while at least this share
    /// of its recent optimistic guesses failed the safety check; 1 turns
    /// adaptive optimism off (the paper's opt-PSMR).
    #[arg(long, default_value_t = ClientOptions::default().optimism_below, value_parser = share)]
    pub(crate) optimism_below: f64,
    /// Bytes per value an insert writes; default the cluster's
    /// `service.value_size` (what the replicas preloaded).
    #[arg(long, value_parser = value_size)]
    pub(crate) value_size: Option<usize>,
    /// Also print, every INTERVAL from the start (warm-up included), a line
    /// `timeline t=SECONDS answered=N errors=N` with the calls that ended in
    /// it: shows how a fault and its healing look from a client.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub(crate) timeline: Option<Duration>,
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
    /// `--sequential-above` is outside 0..=1.
    #[error("--sequential-above must be between 0 and 1, not {0}")]
    SequentialAbove(f64),
}

/// What a load run measured.
pub(crate) struct Report {
    /// Calls answered during the measured interval.
    pub(crate) completed: u64,
    /// Calls that ended in an error during the measured interval.
    pub(crate) errors: u64,
    /// Length of the measured interval.
    pub(crate) elapsed: Duration,
    /// Latencies of every answered call, in microseconds.
    pub(crate) latency: Histogram<u64>,
    /// Latencies of the answered calls whose safety check passed (or that
    /// had none: every call of smr and psmr).
    pub(crate) passed: Histogram<u64>,
    /// Latencies of the answered calls whose safety check failed.
    pub(crate) failed: Histogram<u64>,
    /// The share of calls (0 to 1, warm-up included) that the sequential
    /// fallback sent to `g_all` instead of one thread's group.
    pub(crate) sequential: f64,
    /// The replicas' execution time per command as their last replies
    /// reported it, in microseconds (the most any client saw; 0: none did).
    pub(crate) execution_us: f64,
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

    /// The share of answered calls whose safety check failed, in percent.
    pub(crate) fn fail_rate(&self) -> f64 {
        100.0 * self.failed.len() as f64 / (self.completed as f64).max(1.0)
    }
}

/// The mean of a histogram of microseconds, in milliseconds (0 when empty).
pub(crate) fn mean_ms(histogram: &Histogram<u64>) -> f64 {
    if histogram.is_empty() {
        0.0
    } else {
        histogram.mean() / 1000.0
    }
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "throughput {:.0} commands/s ({} completed, {} errors in {:.1} s); latency ms: p50 {:.3} p99 {:.3} p99.9 {:.3} max {:.3}; failed safety checks {} ({:.2} %, mean latency {:.3} ms vs {:.3} ms passed); sent to g_all by the sequential fallback {:.1} %; replicas report {:.1} us of execution per command",
            self.throughput(),
            self.completed,
            self.errors,
            self.elapsed.as_secs_f64(),
            self.latency_ms(0.5),
            self.latency_ms(0.99),
            self.latency_ms(0.999),
            self.latency.max() as f64 / 1000.0,
            self.failed.len(),
            self.fail_rate(),
            mean_ms(&self.failed),
            mean_ms(&self.passed),
            self.sequential * 100.0,
            self.execution_us,
        )
    }
}

/// Counts and latencies of every call of a run, shared by its tasks.
///
/// One pair of histograms for all tasks: a pair per task (hundreds of KB
/// each) missed the cache on every call, and a list per task grew for the
/// whole run (the client faulted in fresh pages all along).
struct Tally {
    errors: u64,
    /// Calls answered and calls that ended in an error, measured or not
    /// (for the timeline).
    answered_all: u64,
    errors_all: u64,
    /// Microseconds, of calls that passed their safety check.
    passed: Histogram<u64>,
    /// Microseconds, of calls that failed it.
    failed: Histogram<u64>,
}

impl Default for Tally {
    fn default() -> Self {
        let histogram =
            Histogram::new_with_bounds(1, MAX_LATENCY_MICROS as u64, 3).expect("valid bounds");
        Tally {
            errors: 0,
            answered_all: 0,
            errors_all: 0,
            passed: histogram.clone(),
            failed: histogram,
        }
    }
}

/// A tally the tasks of one run share (they run on one thread: the lock is
/// never contended).
type SharedTally = Arc<Mutex<Tally>>;

/// Notes a call's ending in `tally`.
fn note(tally: &SharedTally, window: &Window, due: Instant, ending: Ending) {
    tally
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .note(window, due, ending);
}

/// What the tasks noted.
fn take(tally: SharedTally) -> Tally {
    std::mem::take(&mut *tally.lock().unwrap_or_else(|e| e.into_inner()))
}

/// How a call ended.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    Passed,
    Failed,
    Error,
}

impl Tally {
    /// Records a call that was due at `due`, if it falls in the measured interval.
    fn note(&mut self, window: &Window, due: Instant, ending: Ending) {
        let now = Instant::now();
        match ending {
            Ending::Error => self.errors_all += 1,
            Ending::Passed | Ending::Failed => self.answered_all += 1,
        }
        if due < window.from || now > window.end {
            return;
        }
        let micros = now
            .duration_since(due)
            .as_micros()
            .clamp(1, MAX_LATENCY_MICROS) as u64;
        match ending {
            Ending::Passed => self.passed.saturating_record(micros),
            Ending::Failed => self.failed.saturating_record(micros),
            Ending::Error => self.errors += 1,
        }
    }

    fn report(self, elapsed: Duration) -> Report {
        let mut latency = self.passed.clone();
        latency
            .add(&self.failed)
            .expect("histograms of the same bounds");
        Report {
            completed: latency.len(),
            errors: self.errors,
            elapsed,
            latency,
            passed: self.passed,
            failed: self.failed,
            sequential: 0.0,
            execution_us: 0.0,
        }
    }
}

/// Latencies above a minute are recorded as a minute.
const MAX_LATENCY_MICROS: u128 = 60_000_000;

/// The measured interval.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    /// Calls due from here on are measured.
    pub(crate) from: Instant,
    /// Calls answered after this are not.
    pub(crate) end: Instant,
}

/// What every call draws from.
#[derive(Clone, Copy)]
struct Mix {
    dependent: f64,
    key_space: u64,
    value_size: usize,
}

/// Runs the load against `cluster`, measuring from the end of the warm-up.
pub(crate) async fn run(
    cluster: &ClusterConfig,
    options: &LoadOptions,
) -> Result<Report, LoadError> {
    let load = Load::connect(cluster, options).await?;
    let window = load.window();
    Ok(load.run(window).await)
}

/// Connected clients, ready to generate load.
pub(crate) struct Load {
    trees: Vec<BTreeClient>,
    options: LoadOptions,
    mix: Mix,
}

impl Load {
    /// Checks the options and connects the clients.
    pub(crate) async fn connect(
        cluster: &ClusterConfig,
        options: &LoadOptions,
    ) -> Result<Load, LoadError> {
        if !(0.0..=1.0).contains(&options.dependent) {
            return Err(LoadError::Dependent(options.dependent));
        }
        if !(0.0..=1.0).contains(&options.sequential_above) {
            return Err(LoadError::SequentialAbove(options.sequential_above));
        }
        let mut trees = Vec::with_capacity(options.clients.max(1));
        // Consecutive ids from a random base: the clients' answering replicas
        // (chosen by id) take turns, not left to chance.
        let base = rand::random::<u64>() >> 1;
        for i in 0..options.clients.max(1) {
            let client = ClientOptions {
                id: Some(base + i as u64),
                every_replica_answers: options.every_replica_answers,
                sequential_above: options.sequential_above,
                optimism_below: options.optimism_below,
                ..ClientOptions::default()
            };
            trees.push(BTreeClient::connect(cluster, client).await?);
        }
        let mix = Mix {
            dependent: options.dependent,
            key_space: cluster.service.key_space(),
            value_size: options.value_size.unwrap_or(cluster.service.value_size),
        };
        Ok(Load {
            trees,
            options: options.clone(),
            mix,
        })
    }

    /// The measured interval of a run that starts now.
    pub(crate) fn window(&self) -> Window {
        let from = Instant::now() + self.options.warmup;
        Window {
            from,
            end: from + self.options.duration,
        }
    }

    /// Generates load until `window` ends; measures inside it.
    pub(crate) async fn run(&self, window: Window) -> Report {
        let (trees, options, mix) = (&self.trees, &self.options, self.mix);
        let total = SharedTally::default();
        let timeline = options
            .timeline
            .map(|every| tokio::spawn(print_timeline(total.clone(), every, window.end)));
        match options.rate {
            Some(rate) => open_loop(trees, rate, options.seed, mix, window, &total).await,
            None => closed_loops(trees, options, mix, window, &total).await,
        };
        if let Some(timeline) = timeline {
            timeline.abort();
        }
        let tally = take(total);
        let mut report = tally.report(window.end.duration_since(window.from));
        let count = |f: fn(&ClientStats) -> &AtomicU64| -> u64 {
            trees
                .iter()
                .map(|t| f(t.inner().stats()).load(Ordering::Relaxed))
                .sum()
        };
        report.sequential = count(|s| &s.sequential) as f64 / count(|s| &s.calls).max(1) as f64;
        report.execution_us = trees
            .iter()
            .map(|t| t.inner().stats().execution_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0) as f64
            / 1000.0;
        report
    }
}

async fn one_call(tree: &BTreeClient, rng: &mut ChaCha8Rng, mix: Mix) -> Ending {
    let key = rng.random_range(0..mix.key_space);
    let op = if rng.random_bool(mix.dependent) {
        if rng.random_bool(0.5) {
            Op::Insert(key, value_of(key, mix.value_size))
        } else {
            Op::Delete(key)
        }
    } else {
        Op::Read(key)
    };
    match tree.inner().call_answer(op).await {
        Ok(answer) => match Response::decode(&answer.response) {
            Some(Response::Value(_)) if answer.retried => Ending::Failed,
            Some(Response::Value(_)) => Ending::Passed,
            _ => Ending::Error,
        },
        Err(_) => Ending::Error,
    }
}

/// Prints, every `every` until `end`, the calls that ended since the last line.
async fn print_timeline(tally: SharedTally, every: Duration, end: Instant) {
    let start = Instant::now();
    let mut ticks = tokio::time::interval(every);
    ticks.tick().await;
    let (mut answered, mut errors) = (0, 0);
    while Instant::now() < end {
        ticks.tick().await;
        let (a, e) = {
            let t = tally.lock().unwrap_or_else(|e| e.into_inner());
            (t.answered_all, t.errors_all)
        };
        println!(
            "timeline t={:.3} answered={} errors={}",
            start.elapsed().as_secs_f64(),
            a - answered,
            e - errors
        );
        (answered, errors) = (a, e);
    }
}

async fn closed_loops(
    trees: &[BTreeClient],
    options: &LoadOptions,
    mix: Mix,
    window: Window,
    total: &SharedTally,
) {
    let mut tasks = Vec::new();
    for (c, tree) in trees.iter().enumerate() {
        for slot in 0..options.in_flight.max(1) {
            let seed = options.seed ^ ((c * 1_000 + slot) as u64);
            let (tree, total) = (tree.clone(), total.clone());
            tasks.push(tokio::spawn(async move {
                let mut rng = ChaCha8Rng::seed_from_u64(seed);
                while Instant::now() < window.end {
                    let due = Instant::now();
                    let ending = one_call(&tree, &mut rng, mix).await;
                    note(&total, &window, due, ending);
                }
            }));
        }
    }
    for task in tasks {
        let _ = task.await;
    }
}

async fn open_loop(
    trees: &[BTreeClient],
    rate: u64,
    seed: u64,
    mix: Mix,
    window: Window,
    total: &SharedTally,
) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(1) as f64);
    let start = Instant::now();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
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
            let ending = one_call(&tree, &mut rng, mix).await;
            note(&total, &window, due, ending);
        }));
    }
    for task in tasks {
        let _ = task.await;
    }
}

/// A count of at least one, for the command line.
pub(crate) fn at_least_one(text: &str) -> Result<usize, String> {
    match text.parse::<usize>() {
        Ok(0) => Err("must be at least 1".to_string()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

/// Bytes per value, at most the B+-tree's largest, for the command line.
pub(crate) fn value_size(text: &str) -> Result<usize, String> {
    check_value_size(text.parse::<usize>().map_err(|e| e.to_string())?)
}

/// A value size the B+-tree stores (the command line's and experiment files' rule).
pub(crate) fn check_value_size(n: usize) -> Result<usize, String> {
    match n <= psmr_btree::MAX_VALUE {
        true => Ok(n),
        false => Err(format!("must be at most {} bytes", psmr_btree::MAX_VALUE)),
    }
}

/// A share between 0 and 1, for the command line.
pub(crate) fn share(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(x) if (0.0..=1.0).contains(&x) => Ok(x),
        Ok(_) => Err("must be between 0 and 1".to_string()),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A report of calls that passed and failed with these latencies (µs).
    pub(crate) fn report(passed: &[u32], failed: &[u32], errors: u64) -> Report {
        let mut tally = Tally {
            errors,
            ..Tally::default()
        };
        for &micros in passed {
            tally.passed.record(u64::from(micros)).expect("in bounds");
        }
        for &micros in failed {
            tally.failed.record(u64::from(micros)).expect("in bounds");
        }
        tally.report(Duration::from_secs(1))
    }

    #[test]
    fn only_calls_inside_the_window_count_and_endings_are_kept_apart() {
        let now = Instant::now();
        let window = Window {
            from: now,
            end: now + Duration::from_secs(60),
        };
        let mut tally = Tally::default();
        tally.note(&window, now - Duration::from_millis(1), Ending::Passed);
        tally.note(&window, now, Ending::Passed);
        tally.note(&window, now, Ending::Failed);
        tally.note(&window, now, Ending::Error);
        let closed = Window {
            from: now - Duration::from_secs(2),
            end: now - Duration::from_secs(1),
        };
        tally.note(&closed, now - Duration::from_secs(2), Ending::Passed);
        let r = tally.report(Duration::from_secs(2));
        assert_eq!(
            (r.completed, r.errors, r.failed.len(), r.passed.len()),
            (2, 1, 1, 1)
        );
        assert!((r.throughput() - 1.0).abs() < 1e-9);
        assert!((r.fail_rate() - 50.0).abs() < 1e-9);
        assert_eq!(mean_ms(&report(&[], &[], 0).failed), 0.0);
    }
}
