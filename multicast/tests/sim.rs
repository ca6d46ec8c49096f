//! Deterministic simulation of Multi-Ring Paxos under faults (DESIGN.md
//! section 9). Every run prints its seed on failure and replays from it.
//!
//! - `PSMR_SIM_SEEDS=N` runs N seeds of the standard regime (default 500)
//!   and N/5 of the harsh one;
//! - `PSMR_SIM_SEED=S cargo test -p psmr-multicast --test sim replay -- --nocapture`
//!   replays seed S (add `PSMR_SIM_HARSH=1` / `PSMR_SIM_BROKEN=1` as the failure says).

use std::time::Instant;

use psmr_multicast::sim::{self, Failure, SimOptions};

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn seeds_from_env() -> u64 {
    std::env::var("PSMR_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn partition_seeds_from_env() -> u64 {
    std::env::var("PSMR_SIM_PARTITION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| seeds_from_env() / 2)
}

/// Runs `seeds` on every core; returns the failures, in seed order.
fn run_all(seeds: std::ops::Range<u64>, options: SimOptions) -> Vec<Failure> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let mut failures: Vec<Failure> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    seeds
                        .filter(|seed| seed % threads == t)
                        .filter_map(|seed| sim::run(seed, options).err().map(|f| *f))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sim thread"))
            .collect()
    });
    failures.sort_by_key(|f| f.seed);
    failures
}

fn assert_all_pass(n: u64, options: SimOptions) {
    let start = Instant::now();
    let failures = run_all(0..n, options);
    eprintln!("simulated {n} seeds ({options:?}) in {:?}", start.elapsed());
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {n} seeds violated a property; first: {}\n{}",
        failures.len(),
        failures[0],
        failures[0].state
    );
}

#[test]
fn many_seeds_keep_every_property() {
    assert_all_pass(seeds_from_env(), SimOptions::default());
}

#[test]
fn harsh_faults_keep_every_property() {
    let options = SimOptions {
        harsh: true,
        ..SimOptions::default()
    };
    assert_all_pass(seeds_from_env() / 5, options);
}

#[test]
fn partitions_and_pauses_keep_every_property() {
    let options = SimOptions {
        partitions: true,
        ..SimOptions::default()
    };
    assert_all_pass(partition_seeds_from_env(), options);
}

#[test]
fn a_seed_replays_exactly() {
    let a = sim::run(7, SimOptions::default()).expect("seed 7 passes");
    let b = sim::run(7, SimOptions::default()).expect("seed 7 passes");
    assert_eq!(a, b);
    assert!(a.commands > 0 && a.messages > 0 && a.crashes > 0);
}

/// The same harsh scenarios, but acceptors forget their promises and votes
/// when they restart: the checker must report a safety violation.
#[test]
fn an_acceptor_that_forgets_its_promise_is_caught() {
    let options = SimOptions {
        harsh: true,
        broken: true,
        ..SimOptions::default()
    };
    let failures = run_all(0..100, options);
    let safety: Vec<&Failure> = failures
        .iter()
        .filter(|f| f.violation.is_safety())
        .collect();
    eprintln!(
        "{} of 100 seeds failed, {} with a safety violation",
        failures.len(),
        safety.len()
    );
    assert!(
        !safety.is_empty(),
        "no seed exposed the forgetful acceptor as a safety violation"
    );
    eprintln!("first: {}", safety[0]);
}

#[test]
fn replay() {
    let Some(seed) = std::env::var("PSMR_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let options = SimOptions {
        harsh: env_flag("PSMR_SIM_HARSH"),
        broken: env_flag("PSMR_SIM_BROKEN"),
        partitions: env_flag("PSMR_SIM_PARTITIONS"),
    };
    match sim::run(seed, options) {
        Ok(report) => eprintln!("seed={seed} passed: {report:?}"),
        Err(f) => panic!("{f}\n{}", f.state),
    }
}

/// Rate leveling keeps a lone client's merge latency near the consensus
/// latency (a few message delays), not a multiple of the leveling period:
/// idle rings must lead the ring the client uses, also when the client's
/// pauses leave its rings idle in turn.
#[test]
fn a_lone_client_never_waits_for_idle_rings() {
    for seed in 0..4 {
        let think = std::time::Duration::from_millis(2);
        let mut latencies = sim::latency_probe(seed, 2, 300, think);
        assert_eq!(latencies.len(), 300, "seed={seed}: the probe stalled");
        latencies.sort();
        let p50 = latencies[latencies.len() / 2];
        let max = *latencies.last().expect("latencies");
        eprintln!("seed={seed}: p50 {p50:?} max {max:?}");
        // Four message delays of 100 µs, plus at most one leveling period (Δ = 1 ms).
        assert!(
            max <= std::time::Duration::from_micros(1_500),
            "seed={seed}: a command waited {max:?}"
        );
    }
}
