//! `psmr sweep` and `psmr plot` over real local clusters: the CI smoke
//! experiment (`experiments/quick.toml`) end to end, a bad experiment file,
//! and a run whose points answer nothing.

mod common;

use std::net::UdpSocket;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use common::run_psmr;

/// The quick experiment must finish in under a minute; this bounds a slow CI machine.
const SWEEP_TIMEOUT: Duration = Duration::from_secs(180);

/// A base port whose cluster ports (base..base+2, base+100..base+101) were
/// free a moment ago; each call searches its own range, so tests running at
/// once never pick the same one.
fn free_base_port() -> u16 {
    static CALLS: AtomicU16 = AtomicU16::new(0);
    let call = CALLS.fetch_add(1, Ordering::Relaxed);
    let start = 20_000 + (std::process::id() % 1_000) as u16 * 10 + call * 1_000;
    (start..start + 1_000)
        .step_by(7)
        .find(|&base| {
            let ports = [base, base + 1, base + 2, base + 100, base + 101];
            let bound: Vec<_> = ports
                .iter()
                .map_while(|p| UdpSocket::bind(("127.0.0.1", *p)).ok())
                .collect();
            bound.len() == ports.len()
        })
        .expect("a free range of ports")
}

fn sweep(experiment: &Path, out: &Path) -> std::process::Output {
    let port = free_base_port().to_string();
    let args = [
        "sweep",
        experiment.to_str().expect("utf-8 path"),
        "--out",
        out.to_str().expect("utf-8 path"),
        "--port",
        &port,
    ];
    run_psmr(&args, SWEEP_TIMEOUT)
}

/// The single run directory under `out/<name>/`.
fn run_dir(out: &Path, name: &str) -> PathBuf {
    let runs: Vec<_> = std::fs::read_dir(out.join(name))
        .expect("the experiment's directory")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    runs[0].clone()
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn the_quick_experiment_measures_every_point_and_plot_redraws_it() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let quick = Path::new(env!("CARGO_MANIFEST_DIR")).join("quick.toml");
    let result = sweep(&quick, out.path());
    assert!(result.status.success(), "{}", text(&result));
    let dir = run_dir(out.path(), "quick");

    let mut csv = csv::Reader::from_path(dir.join("data.csv")).expect("data.csv");
    let header = csv.headers().expect("a header").clone();
    let column = |name: &str| header.iter().position(|h| h == name).expect(name);
    let (engine, dependent, throughput) = (
        column("engine"),
        column("dependent_pct"),
        column("throughput"),
    );
    let rows: Vec<csv::StringRecord> = csv.records().map(|r| r.expect("a row")).collect();
    let points: Vec<(String, String)> = rows
        .iter()
        .map(|r| (r[engine].to_string(), r[dependent].to_string()))
        .collect();
    let expected: Vec<(String, String)> = ["smr", "psmr", "opt-psmr"]
        .iter()
        .flat_map(|e| ["0.0", "100.0"].map(|d| (e.to_string(), d.to_string())))
        .collect();
    assert_eq!(points, expected);
    for row in &rows {
        let t: f64 = row[throughput].parse().expect("a number");
        assert!(t > 0.0, "{row:?}");
    }

    let summary = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    for needle in [
        "# Smoke test",
        "quick.toml",
        "git commit:",
        "cores,",
        "seed 1",
        "execution cost: none",
        "| 5 | opt-psmr | 2 |",
        "## Throughput over smr, pass by pass",
        "| 2 | psmr | 2 | 2 x 16 | 0 |",
        "| 5 | opt-psmr | 2 | 2 x 16 | 100 |",
        "![",
    ] {
        assert!(summary.contains(needle), "{needle:?} missing:\n{summary}");
    }
    let svg = std::fs::read_to_string(dir.join("throughput.svg")).expect("the SVG plot");
    assert!(
        svg.contains("throughput (commands/s)"),
        "the y axis names its unit"
    );
    let png = dir.join("throughput.png");
    assert!(std::fs::metadata(&png).expect("the PNG plot").len() > 1_000);

    std::fs::remove_file(&png).expect("remove the PNG");
    let replot = run_psmr(&["plot", dir.to_str().expect("utf-8")], SWEEP_TIMEOUT);
    assert!(replot.status.success(), "{}", text(&replot));
    assert!(png.exists(), "psmr plot drew the PNG again");
    assert!(
        !dir.join("cluster").exists(),
        "the clusters' files are removed"
    );
}

#[test]
fn a_bad_experiment_file_names_the_field_and_runs_nothing() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let file = out.path().join("bad.toml");
    std::fs::write(&file, "title = \"t\"\n[sweep]\ndependent = [0.5, 1.5]\n").expect("write");
    let result = sweep(&file, out.path());
    assert_eq!(result.status.code(), Some(1), "{}", text(&result));
    assert!(
        text(&result).contains("sweep.dependent[1]: must be between 0 and 1"),
        "{}",
        text(&result)
    );
    assert!(!out.path().join("bad").exists(), "no results directory");
    let missing = run_psmr(&["plot", "/nonexistent/run"], SWEEP_TIMEOUT);
    assert_eq!(missing.status.code(), Some(1), "{}", text(&missing));
    assert!(text(&missing).contains("/nonexistent/run/experiment.toml"));
}

#[test]
fn a_point_that_answers_nothing_fails_the_run_and_keeps_the_results() {
    let out = tempfile::tempdir().expect("a temporary directory");
    let file = out.path().join("empty.toml");
    // A measured interval of 1 µs: no call can be answered inside it; two
    // passes, each with its own cluster.
    let experiment = "title = \"nothing answers in time\"\nrepeat = 2\n[base]\nengine = \"smr\"\npreload = 1000\nclients = 1\nin_flight = 1\nwarmup = \"100ms\"\nduration = \"1us\"\n";
    std::fs::write(&file, experiment).expect("write");
    let result = sweep(&file, out.path());
    assert_eq!(result.status.code(), Some(1), "{}", text(&result));
    assert!(
        text(&result).contains("points [0] measured zero throughput"),
        "{}",
        text(&result)
    );
    assert_eq!(
        text(&result).matches("point   0").count(),
        2,
        "{}",
        text(&result)
    );
    let dir = run_dir(out.path(), "empty");
    let summary = std::fs::read_to_string(dir.join("summary.md")).expect("summary.md");
    assert!(summary.contains("2 passes over all points"), "{summary}");
    let data = std::fs::read_to_string(dir.join("data.csv")).expect("data.csv");
    let mut lines = data.lines();
    let header: Vec<&str> = lines.next().expect("a header").split(',').collect();
    let row: Vec<&str> = lines.next().expect("one row").split(',').collect();
    assert!(
        lines.next().is_none(),
        "one row per point, not per pass: {data}"
    );
    let passes = header
        .iter()
        .position(|&c| c == "passes")
        .expect("a passes column");
    assert_eq!(row[passes], "2");
}
