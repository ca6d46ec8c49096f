//! What `psmr sweep` writes and `psmr plot` reads back.
//!
//! ```text
//! results/<experiment>/<timestamp>/
//!   experiment.toml   the experiment as run (every default filled in)
//!   data.csv          one row per point (columns: COLUMNS)
//!   summary.md        machine, commit, command, seed, execution cost, a table, the plots
//!   <plot>.svg/.png   one pair per [[plot]] of the experiment
//!   cluster/          the local clusters' files while the run lasts (removed at the end)
//! ```

use std::fmt::Write as _;
use std::path::Path;

use crate::columns::Row;
use crate::experiment::{Experiment, Point};
use crate::load::{Report, mean_ms};
use crate::machine::Machine;

impl Row {
    /// The row of point number `index`, measured as `report` with the
    /// replicas' CPU use `cpu` (percent of one core, mean over replicas).
    pub(crate) fn new(index: usize, p: &Point, report: &Report, cpu: f64) -> Row {
        let (throughput, workers) = (report.throughput(), p.workers());
        Row {
            point: index,
            engine: p.engine.name().to_string(),
            threads: workers,
            storage: p.storage.name().to_string(),
            preload: p.preload,
            exec_busy_us: p.exec_busy.as_secs_f64() * 1e6,
            exec_wait_us: p.exec_wait.as_secs_f64() * 1e6,
            clients: p.clients,
            in_flight: p.in_flight,
            rate: p.rate,
            dependent_pct: p.dependent * 100.0,
            warmup_s: p.warmup.as_secs_f64(),
            duration_s: p.duration.as_secs_f64(),
            seed: p.seed,
            throughput,
            per_thread: throughput / workers as f64,
            p50_ms: report.latency_ms(0.5),
            p99_ms: report.latency_ms(0.99),
            p999_ms: report.latency_ms(0.999),
            mean_ms: mean_ms(&report.latency),
            completed: report.completed,
            errors: report.errors,
            failed: report.failed.len(),
            fail_rate_pct: report.fail_rate(),
            passed_mean_ms: mean_ms(&report.passed),
            failed_mean_ms: mean_ms(&report.failed),
            replica_cpu_pct: cpu,
            sequential_above: p.sequential_above,
            sequential_pct: report.sequential * 100.0,
            passes: 1,
            throughput_min: Some(throughput),
            throughput_max: Some(throughput),
        }
    }
}

/// One row per point from the rows of every pass (in any order; a pass cut
/// short by a failure counts for the points it measured): the row of median
/// throughput (the lower middle one for an even count), with the number of
/// passes and the throughput range over them.
pub(crate) fn median_of(measured: &[Row]) -> Vec<Row> {
    let mut by_point: std::collections::BTreeMap<usize, Vec<&Row>> = Default::default();
    for row in measured {
        by_point.entry(row.point).or_default().push(row);
    }
    by_point
        .into_values()
        .map(|mut rows| {
            rows.sort_by(|a, b| a.throughput.total_cmp(&b.throughput));
            let mut median = rows[lower_middle(rows.len())].clone();
            median.passes = u32::try_from(rows.len()).expect("at most MAX_PASSES passes");
            median.throughput_min = Some(rows[0].throughput);
            median.throughput_max = rows.last().map(|r| r.throughput);
            median
        })
        .collect()
}

/// Where the median of `len` sorted values is: the lower middle one for an
/// even count (a measured value, never an average of two).
fn lower_middle(len: usize) -> usize {
    assert!(len > 0, "no values");
    (len - 1) / 2
}

/// A point's throughput over its baseline twin's (see
/// [`Experiment::baseline_pairs`]), pass by pass.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Ratio {
    /// The point.
    pub(crate) point: usize,
    /// One ratio per pass that measured both points.
    pub(crate) per_pass: Vec<f64>,
}

impl Ratio {
    /// The median ratio (the lower middle one for an even count).
    pub(crate) fn median(&self) -> f64 {
        let mut sorted = self.per_pass.clone();
        sorted.sort_by(f64::total_cmp);
        sorted[lower_middle(sorted.len())]
    }

    /// The lowest ratio.
    pub(crate) fn lowest(&self) -> f64 {
        self.per_pass.iter().copied().fold(f64::INFINITY, f64::min)
    }
}

/// For each `(point, baseline)` pair, the ratio of their throughputs in
/// each pass (`passes`: the rows of each pass) that measured both with a
/// non-zero baseline.
pub(crate) fn ratios(pairs: &[(usize, usize)], passes: &[Vec<Row>]) -> Vec<Ratio> {
    let throughput =
        |rows: &[Row], point| rows.iter().find(|r| r.point == point).map(|r| r.throughput);
    pairs
        .iter()
        .filter_map(|&(point, baseline)| {
            let per_pass: Vec<f64> = passes
                .iter()
                .filter_map(
                    |rows| match (throughput(rows, point), throughput(rows, baseline)) {
                        (Some(a), Some(b)) if b > 0.0 => Some(a / b),
                        _ => None,
                    },
                )
                .collect();
            (!per_pass.is_empty()).then_some(Ratio { point, per_pass })
        })
        .collect()
}

/// The ratios as a markdown section.
pub(crate) fn ratio_table(experiment: &Experiment, rows: &[Row], ratios: &[Ratio]) -> String {
    let baseline = experiment.baseline.map_or("", |b| b.name());
    let mut s = format!(
        "## Throughput over {baseline}, pass by pass\n\nEach ratio divides a point's throughput by {baseline}'s at the same settings, measured in the same pass (back to back when `order` nests the engine innermost), so that a slow minute of the machine slows both.\n\n| point | engine | K | clients x in flight | dependent % | per pass | median | lowest |\n|---:|---|---:|---|---:|---|---:|---:|\n"
    );
    for ratio in ratios {
        let Some(r) = rows.iter().find(|r| r.point == ratio.point) else {
            continue;
        };
        let passes: Vec<String> = ratio.per_pass.iter().map(|v| format!("{v:.2}")).collect();
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} x {} | {:.0} | {} | {:.2} | {:.2} |",
            r.point,
            r.engine,
            r.threads,
            r.clients,
            r.in_flight,
            r.dependent_pct,
            passes.join(" / "),
            ratio.median(),
            ratio.lowest()
        );
    }
    s
}

/// Why results could not be written or read.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ResultsError {
    /// A file could not be written or read.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// `data.csv` is not what `psmr sweep` writes.
    #[error("{path}: {source}")]
    Csv {
        /// The file.
        path: String,
        /// What the CSV reader said.
        #[source]
        source: csv::Error,
    },
}

/// Writes `rows` as `path` (a CSV file with a header line).
pub(crate) fn write_csv(path: &Path, rows: &[Row]) -> Result<(), ResultsError> {
    let csv_error = |source| ResultsError::Csv {
        path: path.display().to_string(),
        source,
    };
    let mut writer = csv::Writer::from_path(path).map_err(csv_error)?;
    for row in rows {
        writer.serialize(row).map_err(csv_error)?;
    }
    writer.flush().map_err(|source| ResultsError::Io {
        path: path.display().to_string(),
        source,
    })
}

/// Reads the rows `write_csv` wrote.
pub(crate) fn read_csv(path: &Path) -> Result<Vec<Row>, ResultsError> {
    let csv_error = |source| ResultsError::Csv {
        path: path.display().to_string(),
        source,
    };
    let mut reader = csv::Reader::from_path(path).map_err(csv_error)?;
    reader
        .deserialize()
        .collect::<Result<Vec<Row>, _>>()
        .map_err(csv_error)
}

/// How a run came about, for `summary.md`.
pub(crate) struct Provenance<'a> {
    /// The machine.
    pub(crate) machine: &'a Machine,
    /// The command line.
    pub(crate) command: String,
    /// When it started (RFC 3339).
    pub(crate) started: String,
    /// How long it took, in seconds.
    pub(crate) took_s: f64,
}

/// The execution cost of a run, named honestly.
pub(crate) fn cost_label(p: &Point) -> String {
    let cost = p.cost();
    if cost.is_zero() {
        return "execution cost: none (the service's own work only)".to_string();
    }
    format!(
        "execution cost added: {cost} (busy work stands for a costlier service, the wait for I/O)"
    )
}

fn passes_label(repeat: u32) -> String {
    if repeat == 1 {
        return "- one pass: every point measured once".to_string();
    }
    format!(
        "- {repeat} passes over all points, each with fresh clusters, every other one in reverse order; a row is the pass of median throughput, the range is over all passes"
    )
}

/// The text of `summary.md`.
pub(crate) fn summary(
    experiment: &Experiment,
    rows: &[Row],
    ratio_table: Option<&str>,
    run: &Provenance<'_>,
) -> String {
    let b = &experiment.base;
    let mut s = format!("# {}\n\n", experiment.title);
    if !experiment.about.is_empty() {
        let _ = writeln!(s, "{}\n", experiment.about.trim());
    }
    let load = match b.rate {
        Some(_) => "open loop (calls start at the offered rate)".to_string(),
        None => "closed loop (clients x calls in flight)".to_string(),
    };
    let m = run.machine;
    let lines = [
        format!("- command: `{}`", run.command),
        format!("- git commit: {}", m.commit),
        format!(
            "- machine: {} cores, {}, Linux {}; every process of the cluster and the clients share it",
            m.cores, m.cpu_model, m.kernel
        ),
        format!("- started {}, took {:.0} s", run.started, run.took_s),
        format!("- {}", cost_label(b)),
        format!("- seed {} (keys and operations of the load)", b.seed),
        format!(
            "- cluster: 3 acceptors and 2 replicas on loopback QUIC, B+-tree with {} keys preloaded; a fresh cluster per engine, thread count and storage (points that differ only in load share it)",
            b.preload
        ),
        format!(
            "- load: {load}; uniform keys; dependent = inserts and deletes (half each), the rest reads; {:?} warm-up, {:?} measured per point",
            b.warmup, b.duration
        ),
        "- CPU: the replicas' processes, percent of one core, mean over replicas".to_string(),
        passes_label(experiment.repeat),
    ];
    for line in lines {
        let _ = writeln!(s, "{line}");
    }
    let _ = writeln!(s, "\n{}\n", table(rows));
    if let Some(ratios) = ratio_table {
        let _ = writeln!(s, "{ratios}");
    }
    for plot in &experiment.plots {
        let _ = writeln!(s, "![{}]({}.svg)\n", plot.title, plot.name);
    }
    s
}

fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| point | engine | K | storage | clients x in flight | rate | dependent % | throughput (cmds/s) | range (cmds/s) | p50 ms | p99 ms | p99.9 ms | failed % | failed / passed mean ms | replica CPU % | sequential % |\n|---:|---|---:|---|---|---:|---:|---:|---|---:|---:|---:|---:|---|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {} | {} | {} | {} x {} | {} | {:.0} | {:.0} | {} | {:.3} | {:.3} | {:.3} | {:.2} | {:.3} / {:.3} | {:.0} | {:.0} |",
            r.point,
            r.engine,
            r.threads,
            r.storage,
            r.clients,
            r.in_flight,
            r.rate.map_or_else(|| "-".to_string(), |v| v.to_string()),
            r.dependent_pct,
            r.throughput,
            range(r),
            r.p50_ms,
            r.p99_ms,
            r.p999_ms,
            r.fail_rate_pct,
            r.failed_mean_ms,
            r.passed_mean_ms,
            r.replica_cpu_pct,
            r.sequential_pct
        );
    }
    s
}

fn range(r: &Row) -> String {
    match (r.throughput_min, r.throughput_max) {
        (Some(lo), Some(hi)) if r.passes > 1 => format!("{lo:.0}–{hi:.0}"),
        _ => "-".to_string(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::columns::{COLUMNS, Column};

    /// A row with every field set, for tests.
    pub(crate) fn sample_row() -> Row {
        let experiment = Experiment::parse("title = \"t\"").unwrap();
        let report = crate::load::tests::report(&[800, 1200], &[2400], 3);
        Row::new(0, &experiment.base, &report, 42.0)
    }

    #[test]
    fn a_row_records_passed_and_failed_calls_and_survives_csv() {
        let row = sample_row();
        assert_eq!((row.completed, row.failed, row.errors), (3, 1, 3));
        assert!((row.fail_rate_pct - 100.0 / 3.0).abs() < 1e-9);
        assert!(
            (row.failed_mean_ms - 2.4).abs() < 0.01,
            "{}",
            row.failed_mean_ms
        );
        assert!(
            (row.passed_mean_ms - 1.0).abs() < 0.01,
            "{}",
            row.passed_mean_ms
        );
        assert_eq!(row.engine, "opt-psmr");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        let mut other = row.clone();
        other.rate = Some(5000);
        write_csv(&path, &[row.clone(), other.clone()]).unwrap();
        assert_eq!(read_csv(&path).unwrap(), vec![row, other]);
        std::fs::write(&path, "point,engine\n1,smr\n").unwrap();
        assert!(read_csv(&path).is_err());
    }

    #[test]
    fn passes_reduce_to_the_median_row_with_the_range() {
        let pass = |point, throughput, p50_ms| Row {
            point,
            throughput,
            p50_ms,
            ..sample_row()
        };
        let measured = [
            pass(0, 300.0, 3.0),
            pass(1, 10.0, 9.0),
            pass(0, 100.0, 1.0),
            pass(1, 30.0, 7.0),
            pass(0, 200.0, 2.0),
        ];
        let rows = median_of(&measured);
        assert_eq!(rows.len(), 2, "one row per point");
        let (a, b) = (&rows[0], &rows[1]);
        assert_eq!(
            (a.point, a.passes, a.throughput, a.p50_ms),
            (0, 3, 200.0, 2.0)
        );
        assert_eq!(
            (a.throughput_min, a.throughput_max),
            (Some(100.0), Some(300.0))
        );
        // An even count takes the lower middle pass, whole (its latency too).
        assert_eq!(
            (b.point, b.passes, b.throughput, b.p50_ms),
            (1, 2, 10.0, 9.0)
        );
        assert_eq!(range(b), "10–30");
        assert_eq!(range(&sample_row()), "-", "one pass has no range");
    }

    #[test]
    fn ratios_divide_by_the_baseline_of_the_same_pass_only() {
        let row = |point, throughput| Row {
            point,
            throughput,
            ..sample_row()
        };
        // Point 1 against its baseline 0, point 3 against 2.
        let first = vec![row(0, 100.0), row(1, 90.0), row(2, 50.0), row(3, 75.0)];
        let second = vec![row(0, 200.0), row(1, 150.0), row(2, 0.0), row(3, 10.0)];
        let cut_short = vec![row(0, 10.0)];
        let passes = [first, second, cut_short];
        let ratios = ratios(&[(1, 0), (3, 2)], &passes);
        assert_eq!(ratios.len(), 2);
        assert_eq!(ratios[0].point, 1);
        assert_eq!(
            ratios[0].per_pass,
            [0.9, 0.75],
            "each pass its own baseline"
        );
        assert_eq!((ratios[0].median(), ratios[0].lowest()), (0.75, 0.75));
        assert_eq!(ratios[1].per_pass, [1.5], "a zero baseline is no ratio");
        let e = Experiment::parse(&crate::experiment::tests::FILE.replacen(
            "title = \"t\"",
            "title = \"t\"\nbaseline = \"smr\"",
            1,
        ))
        .unwrap();
        let rows = median_of(&passes.concat());
        let table = ratio_table(&e, &rows, &ratios);
        assert!(table.contains("Throughput over smr"), "{table}");
        assert!(table.contains("| 0.90 / 0.75 | 0.75 | 0.75 |"), "{table}");
    }

    #[test]
    fn a_data_file_from_before_passes_still_reads() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.csv");
        let row = sample_row();
        write_csv(&path, std::slice::from_ref(&row)).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        // Drop the last three columns (passes, throughput_min, throughput_max).
        let old: String = text
            .lines()
            .map(|l| l.rsplitn(4, ',').last().unwrap().to_string() + "\n")
            .collect();
        std::fs::write(&path, old).unwrap();
        let read = read_csv(&path).unwrap();
        assert_eq!(read[0].passes, 1);
        assert_eq!(
            (read[0].throughput_min, read[0].throughput_max),
            (None, None)
        );
        assert_eq!(read[0].throughput, row.throughput);
    }

    #[test]
    fn every_column_reads_its_field() {
        let row = sample_row();
        let number = |name: &str| Column::named(name).unwrap().number(&row);
        assert_eq!(number("cpu"), Some(42.0));
        assert_eq!(number("fail_rate"), Some(row.fail_rate_pct));
        assert_eq!(number("engine"), None);
        assert_eq!(Column::named("engine").unwrap().text(&row), "opt-psmr");
        assert_eq!(Column::named("threads").unwrap().text(&row), "2 threads");
        let names: std::collections::HashSet<_> = COLUMNS.iter().map(|c| c.name).collect();
        assert_eq!(names.len(), COLUMNS.len(), "column names are unique");
    }
}
