//! The whole-stack simulator's seeds (docs/testing.md, "The whole-stack
//! simulator"): every engine under faults, replay by seed, and the planted
//! replica-layer bug caught.
//!
//! `PSMR_STACK_SEEDS=N` runs N seeds per engine from `PSMR_STACK_FIRST_SEED`
//! (default 20 from 1, a few seconds);
//! `PSMR_STACK_SEED=S PSMR_STACK_ENGINE=E` with test `replay` replays one.

#![allow(clippy::print_stdout)]

use psmr_core::EngineKind;
use psmr_replica::PlantedBug;
use psmr_stack_sim::{Report, StackOptions, run};

const ENGINES: [EngineKind; 5] = [
    EngineKind::Smr,
    EngineKind::Psmr,
    EngineKind::OptPsmr,
    EngineKind::Cbase,
    EngineKind::Classes,
];

fn seeds() -> u64 {
    std::env::var("PSMR_STACK_SEEDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(20)
}

fn show(r: &Report) {
    println!(
        "seed={} engine={} ok={} unknown={} mean_call={:?} slowest_call={:?} retries={} reproposals={} failovers={} sequential={} cautious={} messages={} lost={} duplicated={} faults={} finished_at={:?}",
        r.seed,
        r.engine,
        r.ok,
        r.unknown,
        r.mean_call,
        r.slowest_call,
        r.retries,
        r.reproposals,
        r.failovers,
        r.sequential,
        r.cautious,
        r.messages,
        r.lost,
        r.duplicated,
        r.faults,
        r.finished_at
    );
}

/// Runs the seeds on `engine`; every run must pass, and together they must
/// reach the paths the simulator is for (the defaults' 20 seeds do).
fn sweep(engine: EngineKind) {
    let first: u64 = std::env::var("PSMR_STACK_FIRST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1);
    let mut total = Totals::default();
    for seed in first..first + seeds() {
        match run(seed, StackOptions::new(engine)) {
            Ok(report) => {
                show(&report);
                total.add(&report);
            }
            Err(failure) => panic!("{failure}"),
        }
    }
    println!("{engine}: {total:?}");
    if seeds() >= 20 {
        assert!(total.reproposals > 0, "{engine}: no re-proposal: {total:?}");
        assert!(total.failovers > 0, "{engine}: no failover: {total:?}");
        assert!(total.duplicated > 0, "{engine}: no duplicate: {total:?}");
        if engine == EngineKind::OptPsmr {
            assert!(total.retries > 0, "no failed safety check: {total:?}");
        }
    }
}

/// Counters summed over a sweep.
#[derive(Debug, Default)]
struct Totals {
    ok: usize,
    unknown: usize,
    retries: u64,
    reproposals: u64,
    failovers: u64,
    sequential: u64,
    cautious: u64,
    duplicated: u64,
    faults: usize,
}

impl Totals {
    fn add(&mut self, r: &Report) {
        self.ok += r.ok;
        self.unknown += r.unknown;
        self.retries += r.retries;
        self.reproposals += r.reproposals;
        self.failovers += r.failovers;
        self.sequential += r.sequential;
        self.cautious += r.cautious;
        self.duplicated += r.duplicated;
        self.faults += r.faults;
    }
}

#[test]
fn smr_keeps_the_client_visible_history_linearizable_under_faults() {
    sweep(EngineKind::Smr);
}

#[test]
fn psmr_keeps_the_client_visible_history_linearizable_under_faults() {
    sweep(EngineKind::Psmr);
}

#[test]
fn opt_psmr_keeps_the_client_visible_history_linearizable_under_faults() {
    sweep(EngineKind::OptPsmr);
}

#[test]
fn cbase_keeps_the_client_visible_history_linearizable_under_faults() {
    sweep(EngineKind::Cbase);
}

#[test]
fn classes_keeps_the_client_visible_history_linearizable_under_faults() {
    sweep(EngineKind::Classes);
}

/// Seed 8 has no random loss: enough calls for the sequential fallback
/// under psmr, so that the replay covers it too.
#[test]
fn a_seed_replays_the_same_run() {
    for engine in ENGINES {
        let options = StackOptions::new(engine);
        let first = run(8, options).unwrap_or_else(|f| panic!("{f}"));
        let again = run(8, options).unwrap_or_else(|f| panic!("{f}"));
        show(&first);
        assert_eq!(first, again, "{engine}: seed 8 ran differently twice");
        if engine == EngineKind::Psmr {
            assert!(first.sequential > 0, "the fallback is not covered");
        }
    }
}

#[test]
fn a_replica_that_executes_a_resent_request_again_is_caught() {
    for engine in [EngineKind::Psmr, EngineKind::Cbase] {
        let options = StackOptions {
            planted: Some(PlantedBug::ExecuteResent),
            ..StackOptions::new(engine)
        };
        let caught = (1..=20).find_map(|seed| run(seed, options).err());
        let failure =
            caught.unwrap_or_else(|| panic!("{engine}: the planted bug went unseen in 20 seeds"));
        println!("caught: {failure}");
    }
}

/// Adaptive optimism: on the same seeds, opt-psmr clients that stop
/// guessing while guesses fail often retry fewer commands than the paper's
/// clients, which always guess, and both stay linearizable.
#[test]
fn opt_psmr_clients_stop_guessing_while_guesses_fail_often() {
    let mut adaptive = Totals::default();
    let mut paper = Totals::default();
    for seed in 1..=10 {
        for (always_guess, total) in [(false, &mut adaptive), (true, &mut paper)] {
            let options = StackOptions {
                always_guess,
                ..StackOptions::new(EngineKind::OptPsmr)
            };
            total.add(&run(seed, options).unwrap_or_else(|f| panic!("{f}")));
        }
    }
    println!("adaptive: {adaptive:?}\npaper:    {paper:?}");
    assert_eq!(paper.cautious, 0, "the paper's clients always guess");
    assert!(adaptive.cautious > 0, "no client stopped guessing");
    let rate = |t: &Totals| t.retries as f64 / t.ok as f64;
    assert!(
        rate(&adaptive) < rate(&paper) / 2.0,
        "retries per call: adaptive {:.3}, paper {:.3}",
        rate(&adaptive),
        rate(&paper)
    );
}

/// Replays `PSMR_STACK_SEED` on `PSMR_STACK_ENGINE` (default opt-psmr).
#[test]
fn replay() {
    let Some(seed) = std::env::var("PSMR_STACK_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    let engine = std::env::var("PSMR_STACK_ENGINE")
        .ok()
        .and_then(|e| ENGINES.into_iter().find(|k| k.to_string() == e))
        .unwrap_or(EngineKind::OptPsmr);
    let planted = std::env::var("PSMR_STACK_PLANTED").is_ok();
    let options = StackOptions {
        planted: planted.then_some(PlantedBug::ExecuteResent),
        always_guess: std::env::var("PSMR_STACK_ALWAYS_GUESS").is_ok(),
        ..StackOptions::new(engine)
    };
    match run(seed, options) {
        Ok(report) => show(&report),
        Err(failure) => panic!("{failure}"),
    }
}
