//! Deterministic simulation of Multi-Ring Paxos under faults (docs/testing.md). Every run prints its seed on failure and replays from it.
//!
//! - `PSMR_SIM_SEEDS=N` runs N seeds of the standard regime (default 500)
//!   and N/5 of the harsh one;
//! - `PSMR_SIM_SEED=S cargo test -p psmr-sim --test sim replay -- --nocapture`
//!   replays seed S (add `PSMR_SIM_HARSH=1` / `PSMR_SIM_BROKEN=1` as the failure says).

use std::time::Instant;

use psmr_core::proto::PlantedBug;
use psmr_sim::{self as sim, DiskMode, Failure, SimOptions};

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn seeds_from_env() -> u64 {
    std::env::var("PSMR_SIM_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(500)
}

fn planted_bug(name: &str) -> Option<PlantedBug> {
    [
        PlantedBug::OldHintRule,
        PlantedBug::OldLeadership,
        PlantedBug::OldCoordinator,
    ]
    .into_iter()
    .find(|bug| format!("{bug:?}") == name)
}

fn partition_seeds_from_env() -> u64 {
    std::env::var("PSMR_SIM_PARTITION_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| seeds_from_env() / 2)
}

/// Runs `seeds` on every core; returns every run's outcome, in seed order.
fn run_seeds(
    seeds: std::ops::Range<u64>,
    options: SimOptions,
) -> Vec<Result<sim::Report, Box<Failure>>> {
    let threads = std::thread::available_parallelism().map_or(2, |n| n.get()) as u64;
    let mut outcomes: Vec<(u64, Result<sim::Report, Box<Failure>>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let seeds = seeds.clone();
                s.spawn(move || {
                    seeds
                        .filter(|seed| seed % threads == t)
                        .map(|seed| (seed, sim::run(seed, options)))
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        handles
            .into_iter()
            .flat_map(|h| h.join().expect("sim thread"))
            .collect()
    });
    outcomes.sort_by_key(|(seed, _)| *seed);
    outcomes.into_iter().map(|(_, outcome)| outcome).collect()
}

/// Runs `seeds` on every core; returns the failures, in seed order.
fn run_all(seeds: std::ops::Range<u64>, options: SimOptions) -> Vec<Failure> {
    run_seeds(seeds, options)
        .into_iter()
        .filter_map(|outcome| outcome.err().map(|f| *f))
        .collect()
}

/// The lower-middle, 99th percentile and largest of `values` (with the seed).
fn spread<T: Ord + Copy + std::fmt::Debug>(mut values: Vec<T>) -> String {
    values.sort();
    let at = |q: f64| values[((values.len() - 1) as f64 * q) as usize];
    match values.last() {
        Some(max) => format!("p50 {:?} p99 {:?} max {max:?}", at(0.5), at(0.99)),
        None => "none".to_string(),
    }
}

/// Runs seeds `0..n`, fails naming every seed that broke a property, and
/// returns the reports of the runs.
fn assert_all_pass(n: u64, options: SimOptions) -> Vec<sim::Report> {
    let start = Instant::now();
    let (reports, failures): (Vec<_>, Vec<_>) = run_seeds(0..n, options)
        .into_iter()
        .partition(Result::is_ok);
    eprintln!("simulated {n} seeds ({options:?}) in {:?}", start.elapsed());
    let failures: Vec<Failure> = failures
        .into_iter()
        .filter_map(|o| o.err().map(|f| *f))
        .collect();
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
    reports.into_iter().filter_map(Result::ok).collect()
}

/// Every property holds; and the runs reached a value-less decision
/// (`Chosen`) at a coordinator that no longer held its vote (a restart),
/// which it then learned as a gap.
#[test]
fn many_seeds_keep_every_property() {
    let reports = assert_all_pass(seeds_from_env(), SimOptions::default());
    let unknown: u64 = reports.iter().map(|r| r.chosen_unknown).sum();
    eprintln!("value-less decisions left to gap recovery: {unknown}");
    assert!(unknown > 0, "no run reached a Chosen for a lost vote");
    let waits: u64 = reports.iter().map(|r| r.durable_waits).sum();
    eprintln!("decisions that waited for a coordinator's durable notice: {waits}");
    assert!(waits > 0, "no run reached a decision on a Durable notice");
}

#[test]
fn harsh_faults_keep_every_property() {
    let options = SimOptions {
        harsh: true,
        ..SimOptions::default()
    };
    assert_all_pass(seeds_from_env() / 5, options);
}

/// Every property holds under partitions and pauses; prints how long rings
/// took to deliver everything after healing, and how many terms started.
#[test]
fn partitions_and_pauses_keep_every_property() {
    let options = SimOptions {
        partitions: true,
        ..SimOptions::default()
    };
    let seeds = partition_seeds_from_env();
    let start = Instant::now();
    let outcomes = run_seeds(0..seeds, options);
    eprintln!(
        "simulated {seeds} seeds ({options:?}) in {:?}",
        start.elapsed()
    );
    let reports: Vec<&sim::Report> = outcomes.iter().filter_map(|o| o.as_ref().ok()).collect();
    eprintln!(
        "after healing, everything delivered within: {}",
        spread(
            reports
                .iter()
                .map(|r| (r.recovered_after, r.seed))
                .collect()
        )
    );
    eprintln!(
        "terms started per run: {}",
        spread(reports.iter().map(|r| (r.elections, r.seed)).collect())
    );
    let failures: Vec<&Failure> = outcomes
        .iter()
        .filter_map(|o| o.as_ref().err().map(|f| &**f))
        .collect();
    for f in &failures {
        eprintln!("{f}");
    }
    assert!(
        failures.is_empty(),
        "{} of {seeds} seeds violated a property; first: {}\n{}",
        failures.len(),
        failures[0],
        failures[0].state
    );
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

/// Runs the partition regime with `bug` planted; returns the failures.
fn planted(bug: PlantedBug) -> Vec<Failure> {
    let options = SimOptions {
        partitions: true,
        planted: Some(bug),
        ..SimOptions::default()
    };
    let seeds = partition_seeds_from_env();
    let failures = run_all(0..seeds, options);
    let safety = failures.iter().filter(|f| f.violation.is_safety()).count();
    eprintln!(
        "{bug:?}: {} of {seeds} seeds failed, {safety} with a safety violation",
        failures.len()
    );
    failures
}

/// The coordinator as it was before partitions were handled (who leads, and
/// the `decided_below` hint): the partition regime must expose the agreement
/// bug it had on rings of five within the seeds CI runs.
#[test]
fn the_old_coordinator_breaks_agreement_in_the_partition_regime() {
    let failures = planted(PlantedBug::OldCoordinator);
    let first = failures.iter().find(|f| f.violation.is_safety());
    let first = first.expect("no partition seed exposed the old coordinator's agreement bug");
    eprintln!("first: {first}");
}

/// Seeds that once failed, kept as regression tests: 33095 and 67922
/// (standard) found a durable acceptor replaying a vote over the value it
/// had recorded as decided; 3287, 3379, 14017 and 14846 (partitions) found
/// rate leveling that trusted a lagging acceptor's view of the rings
/// merged with its own.
#[test]
fn seeds_that_once_failed_pass() {
    let partitions = SimOptions {
        partitions: true,
        ..SimOptions::default()
    };
    let seeds = [
        (33095, SimOptions::default()),
        (67922, SimOptions::default()),
        (3287, partitions),
        (3379, partitions),
        (14017, partitions),
        (14846, partitions),
    ];
    for (seed, options) in seeds {
        if let Err(f) = sim::run(seed, options) {
            panic!("{f}\n{}", f.state);
        }
    }
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
        planted: std::env::var("PSMR_SIM_PLANTED")
            .ok()
            .and_then(|v| planted_bug(&v)),
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

/// One fault of each kind on the coordinator of `g_all` (n1), for a few
/// seconds, on an otherwise clean cluster under steady load: the ring must
/// serve during the fault (another node takes over), serve again at once
/// after it, and start few terms. Prints each fault's figures, and the old
/// leadership rules' beside them.
#[test]
fn single_faults_cost_few_terms_and_little_time() {
    use psmr_core::proto::NodeId;
    use psmr_sim::faults::{Episode, EpisodeKind};
    use std::collections::BTreeSet;
    use std::time::Duration;

    let n1 = NodeId(1);
    let others: BTreeSet<NodeId> = [2, 3, 100, 101, 102, 1000].map(NodeId).into();
    let set = |nodes: &[u32]| nodes.iter().map(|&n| NodeId(n)).collect::<BTreeSet<_>>();
    let faults = [
        ("split", EpisodeKind::Split { side: set(&[1]) }),
        (
            "inbound cut",
            EpisodeKind::Cut {
                from: others.clone(),
                to: set(&[1]),
            },
        ),
        (
            "outbound cut",
            EpisodeKind::Cut {
                from: set(&[1]),
                to: others.clone(),
            },
        ),
        (
            "pair cut n1-n2",
            EpisodeKind::Cut {
                from: set(&[1, 2]),
                to: set(&[1, 2]),
            },
        ),
        (
            "inbound loss 50%",
            EpisodeKind::Lossy {
                from: others.clone(),
                to: set(&[1]),
                loss: 0.5,
            },
        ),
        (
            "inbound loss 90%",
            EpisodeKind::Lossy {
                from: others.clone(),
                to: set(&[1]),
                loss: 0.9,
            },
        ),
        ("pause", EpisodeKind::Pause { node: n1 }),
    ];
    let mut worst_cases = Vec::new();
    let mut storm = 0;
    for (name, kind) in faults {
        let probe = |options| sim::Probe {
            seed: 1,
            episodes: vec![Episode {
                at: Duration::from_secs(1),
                duration: Duration::from_secs(5),
                kind: kind.clone(),
            }],
            load: Duration::from_secs(8),
            disk: DiskMode::Memory,
            options,
            acceptors: 3,
            tail: Duration::from_secs(2),
        };
        let now = sim::fault_probe(probe(SimOptions::default()))
            .unwrap_or_else(|f| panic!("{name}: {f}\n{}", f.state));
        assert_eq!(now.stalled, None, "{name}");
        let old = SimOptions {
            planted: Some(PlantedBug::OldLeadership),
            ..SimOptions::default()
        };
        let before = match sim::fault_probe(probe(old)) {
            Ok(r) if name.starts_with("pair") => {
                storm = r.elections;
                format!("{} terms", r.elections)
            }
            Ok(r) => format!(
                "{} terms, {:.0} % served, resumed after {:?}",
                r.elections,
                r.served_during * 100.0,
                r.resumed_after
            ),
            Err(f) => format!("{}", f.violation),
        };
        eprintln!(
            "{name:>16}: {} terms, {:.0} % served during, resumed after {:?}, worst wait after {:?} (old rules: {before})",
            now.elections,
            now.served_during * 100.0,
            now.resumed_after,
            now.worst_after
        );
        worst_cases.push((name, now));
    }
    for (name, r) in worst_cases {
        assert!(
            r.resumed_after <= Duration::from_millis(100),
            "{name}: {r:?}"
        );
        assert!(r.elections <= 20, "{name}: {r:?}");
    }
    // The probe itself can see a storm: under the old rules two nodes that
    // cannot hear each other take the ring from each other without end.
    assert!(storm > 200, "old rules, pair cut: only {storm} terms");
}

/// Acceptors that restart in memory mode lose their votes and stay out of
/// Phase 1 until they know every instance below their vote bound decided.
/// On an idle ring nothing is decided unless the coordinator skips up to the
/// bound: without that they stayed amnesiac for good, and overlapping
/// restarts left no Phase 1 quorum. Within `f` failures (amnesiacs count)
/// they all rejoin; beyond it (a coordinator and one more of three lost their
/// votes) no Phase 1 can ever be safe again, and every acceptor says so and
/// stops rather than wait for ever.
#[test]
fn amnesiac_acceptors_of_an_idle_ring_rejoin_and_beyond_f_the_ring_says_so() {
    use psmr_core::proto::NodeId;
    use psmr_sim::faults::{Episode, EpisodeKind};
    use std::time::Duration;

    let crash = |node, at_ms, ms| Episode {
        at: Duration::from_millis(at_ms),
        duration: Duration::from_millis(ms),
        kind: EpisodeKind::Crash { node: NodeId(node) },
    };
    // Load for the first second only; the restarts come when the rings are idle.
    let probe = |acceptors, episodes, tail| sim::Probe {
        seed: 3,
        episodes,
        load: Duration::from_secs(1),
        disk: DiskMode::Memory,
        options: SimOptions::default(),
        acceptors,
        tail,
    };
    let two_s = Duration::from_secs(2);
    let rejoin = [
        ("one of three", probe(3, vec![crash(2, 1500, 200)], two_s)),
        (
            "a coordinator of three",
            probe(3, vec![crash(1, 1500, 200)], two_s),
        ),
        (
            "two of five, overlapping",
            probe(5, vec![crash(3, 1500, 200), crash(4, 1600, 300)], two_s),
        ),
    ];
    for (name, probe) in rejoin {
        let r = sim::fault_probe(probe).unwrap_or_else(|f| panic!("{name}: {f}\n{}", f.state));
        eprintln!("{name}: {} terms, halted {:?}", r.elections, r.halted);
        assert_eq!(
            r.amnesiac_at_end, 0,
            "{name}: still amnesiac 2 s after\n{}",
            r.state
        );
        assert_eq!(r.stalled, None, "{name}");
        assert!(r.halted.is_empty(), "{name}: {:?}", r.halted);
    }
    let beyond = probe(
        3,
        vec![crash(2, 1500, 200), crash(3, 1600, 300)],
        Duration::from_secs(10),
    );
    let r = sim::fault_probe(beyond).unwrap_or_else(|f| panic!("beyond f: {f}\n{}", f.state));
    eprintln!("beyond f: halted {:?}", r.halted);
    assert!(
        !r.halted.is_empty() && r.halted.iter().all(|(_, why)| why.contains("--init")),
        "beyond f, the acceptors must stop with a clear error\n{}",
        r.state
    );
}

/// A whole memory-mode cluster killed at once has lost every vote: no Phase 1
/// can run safely again. Every acceptor says so and stops (it would
/// otherwise wait for ever); a durable cluster restarts and serves.
#[test]
fn a_whole_memory_cluster_restart_is_refused_with_a_clear_error_and_a_durable_one_serves() {
    use psmr_core::proto::NodeId;
    use psmr_sim::faults::{Episode, EpisodeKind};
    use std::time::Duration;

    let all = |disk| sim::Probe {
        seed: 5,
        episodes: (1..=3)
            .map(|n| Episode {
                at: Duration::from_millis(500),
                duration: Duration::from_millis(100),
                kind: EpisodeKind::Crash { node: NodeId(n) },
            })
            .collect(),
        load: Duration::from_secs(2),
        disk,
        options: SimOptions::default(),
        acceptors: 3,
        tail: Duration::from_secs(8),
    };
    let memory = sim::fault_probe(all(DiskMode::Memory)).unwrap_or_else(|f| panic!("{f}"));
    eprintln!("memory: {memory:?}");
    assert_eq!(memory.halted.len(), 3, "every acceptor stops: {memory:?}");
    assert!(
        memory
            .halted
            .iter()
            .all(|(_, why)| why.contains("--init") && why.contains("durable")),
        "{memory:?}"
    );
    let durable = sim::fault_probe(all(DiskMode::Durable)).unwrap_or_else(|f| panic!("{f}"));
    eprintln!("durable: {durable:?}");
    assert_eq!(durable.stalled, None);
    assert!(durable.halted.is_empty());
}
