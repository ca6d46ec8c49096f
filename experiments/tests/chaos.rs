//! `psmr chaos` as CI runs it: a short matrix of engines and faults (each a
//! second long) whose histories must be linearizable, and the failures it
//! must report. `PSMR_CHAOS_SOAK=1` runs the long soak instead: every
//! engine, every fault class, three rounds of 3 s faults (docs/testing.md).
//! The seed is printed; `PSMR_CHAOS_SEED` replays it.

// A test reports its seed and the runs' tables on standard output.
#![allow(clippy::print_stdout)]

mod common;

use std::path::Path;
use std::time::Duration;

use common::run_psmr;

/// Every port `psmr chaos` needs with up to 5 acceptors: the relays and,
/// 50 above, the nodes.
fn free_base() -> u16 {
    let relays = [0, 1, 2, 3, 4, 100, 101];
    let ports: Vec<u16> = relays.iter().flat_map(|&p| [p, p + 50]).collect();
    common::free_base(&ports)
}

fn seed() -> String {
    let seed =
        std::env::var("PSMR_CHAOS_SEED").unwrap_or_else(|_| rand::random::<u32>().to_string());
    println!("seed={seed} (replay with PSMR_CHAOS_SEED={seed})");
    seed
}

/// Runs `psmr chaos` with `args` in `dir`; its exit status, standard output
/// and standard error.
fn chaos(dir: &Path, args: &[&str], timeout: Duration) -> (bool, String, String) {
    let port = free_base().to_string();
    let dir = dir.to_str().expect("a UTF-8 path");
    let mut all = vec!["chaos", "--dir", dir, "--port", &port];
    all.extend_from_slice(args);
    let out = run_psmr(&all, timeout);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    println!("{stdout}{stderr}");
    (out.status.success(), stdout, stderr)
}

/// Each engine's table has a row per fault, and passed.
fn assert_passed(ok: bool, stdout: &str, engines: &[&str], faults: usize) {
    assert!(ok, "psmr chaos failed (its output is above)");
    for engine in engines {
        assert!(
            stdout.contains(&format!("{engine}: passed")),
            "{engine} did not pass"
        );
    }
    let rows = stdout.lines().filter(|l| l.ends_with("| ok |")).count();
    assert_eq!(rows, engines.len() * faults, "one row per fault and engine");
}

#[test]
fn every_engine_stays_linearizable_through_crashes_pauses_and_a_split() {
    if std::env::var_os("PSMR_CHAOS_SOAK").is_some() {
        let dir = tempfile::tempdir().expect("a temp dir");
        let seed = seed();
        let args = ["--seed", &seed, "--rounds", "3", "--fault-for", "3s"];
        let (ok, stdout, _) = chaos(dir.path(), &args, Duration::from_secs(3_600));
        let engines = ["smr", "psmr", "opt-psmr", "cbase", "classes"];
        assert_passed(ok, &stdout, &engines, 3 * 9);
        return;
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let seed = seed();
    let faults = "kill-coordinator,pause,split";
    let args = ["--seed", &seed, "--faults", faults, "--fault-for", "1s"];
    let (ok, stdout, _) = chaos(dir.path(), &args, Duration::from_secs(600));
    let engines = ["smr", "psmr", "opt-psmr", "cbase", "classes"];
    assert_passed(ok, &stdout, &engines, 3);
}

/// With five acceptors: the rings that once could break agreement.
#[test]
fn opt_psmr_with_five_acceptors_stays_linearizable_through_every_other_fault() {
    if std::env::var_os("PSMR_CHAOS_SOAK").is_some() {
        return; // the soak runs every fault above
    }
    let dir = tempfile::tempdir().expect("a temp dir");
    let seed = seed();
    let faults = "kill-acceptor,kill-replica,isolate,one-way,slow,kill-all";
    let args = [
        "--engine",
        "opt-psmr",
        "--acceptors",
        "5",
        "--seed",
        &seed,
        "--faults",
        faults,
        "--fault-for",
        "1s",
    ];
    let (ok, stdout, _) = chaos(dir.path(), &args, Duration::from_secs(300));
    assert_passed(ok, &stdout, &["opt-psmr"], 6);
}

#[test]
fn a_cluster_that_does_not_recover_in_time_fails_the_run() {
    let dir = tempfile::tempdir().expect("a temp dir");
    // Every process killed: no cluster is back in a millisecond.
    let args = [
        "--engine",
        "smr",
        "--faults",
        "kill-all",
        "--fault-for",
        "1s",
        "--recover-within",
        "1ms",
        "--seed",
        "1",
    ];
    let (ok, stdout, stderr) = chaos(dir.path(), &args, Duration::from_secs(120));
    assert!(!ok, "the run passed");
    assert!(
        stdout.contains("| NOT |"),
        "the row says it did not recover"
    );
    assert!(
        stderr.contains("smr: no recovery within 1ms after kill -9 every process"),
        "{stderr}"
    );
}

#[test]
fn impossible_options_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let args = ["--storage", "memory", "--faults", "kill-all"];
    let (ok, _, stderr) = chaos(dir.path(), &args, Duration::from_secs(30));
    assert!(
        !ok && stderr.contains("kill-all needs --storage durable"),
        "{stderr}"
    );
    let (ok, _, stderr) = chaos(
        dir.path(),
        &["--faults", "earthquake"],
        Duration::from_secs(30),
    );
    assert!(
        !ok && stderr.contains("invalid value 'earthquake'"),
        "{stderr}"
    );
    assert!(!dir.path().join("smr").exists(), "nothing was written");
}
