//! `psmr sweep <experiment.toml>` and `psmr plot <dir>`.
//!
//! ```text
//! experiment file ──> points (experiment::Experiment::points)
//!   per point:  a fresh local cluster when engine, threads, storage, preload or
//!               execution cost change (else the running one) ──> wait until it answers
//!               ──> load: warm-up, then the measured interval, replica CPU sampled
//!               at both ends ──> one row
//!   at the end: data.csv, summary.md, plots; a point with zero throughput fails the run
//! ```
//!
//! The results are written even when a point fails, so a long run that
//! breaks at its last point keeps what it measured.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use indicatif::{ProgressBar, ProgressStyle};
use psmr_core::cluster::ServiceKind;
use thiserror::Error;

use crate::columns::Row;
use crate::experiment::{Experiment, ExperimentError, Point};
use crate::load::{Load, LoadError, LoadOptions};
use crate::local::{ClusterSpec, LocalCluster, LocalError};
use crate::machine::{Machine, cpu_percent, cpu_times};
use crate::plot::PlotError;
use crate::results::{self, Provenance, Ratio, ResultsError};

/// Options of `psmr sweep`.
#[derive(clap::Args, Debug)]
pub(crate) struct SweepArgs {
    /// The experiment file (see experiments/*.toml).
    experiment: PathBuf,
    /// Results go to OUT/EXPERIMENT/TIMESTAMP/.
    #[arg(long, default_value = "results")]
    out: PathBuf,
    /// First port of the local clusters (acceptors PORT..PORT+2, replicas PORT+100..PORT+101).
    #[arg(long, default_value_t = 7400)]
    port: u16,
}

/// Why a sweep failed.
#[derive(Debug, Error)]
pub(crate) enum SweepError {
    /// The experiment file is unusable.
    #[error(transparent)]
    Experiment(#[from] ExperimentError),
    /// A local cluster failed.
    #[error(transparent)]
    Local(#[from] LocalError),
    /// The load generator failed.
    #[error(transparent)]
    Load(#[from] LoadError),
    /// Results could not be written or read.
    #[error(transparent)]
    Results(#[from] ResultsError),
    /// A plot could not be drawn.
    #[error(transparent)]
    Plot(#[from] PlotError),
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A point failed; what was measured before it is in `dir`.
    #[error("point {point} failed: {source} (results so far in {})", dir.display())]
    Point {
        /// The point's number.
        point: usize,
        /// Where the results are.
        dir: PathBuf,
        /// Why.
        #[source]
        source: Box<SweepError>,
    },
    /// Points answered nothing: the system is broken, not slow.
    #[error("points {points:?} measured zero throughput (results in {})", dir.display())]
    ZeroThroughput {
        /// Their numbers.
        points: Vec<usize>,
        /// Where the results are.
        dir: PathBuf,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> SweepError + '_ {
    move |source| SweepError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Runs the experiment; returns the results directory.
pub(crate) fn run(args: SweepArgs) -> Result<PathBuf, SweepError> {
    let experiment = Experiment::load(&args.experiment)?;
    let points = experiment.points();
    let passes = experiment.repeat as usize;
    let started = SystemTime::now();
    let clock = Instant::now();
    let dir = results_dir(&args.out, &args.experiment, started)?;
    let path = dir.join("experiment.toml");
    std::fs::write(&path, experiment.to_toml()).map_err(io(&path))?;
    let machine = Machine::describe();
    println!(
        "psmr sweep: {} ({} points{}, about {}) -> {}",
        experiment.title,
        points.len(),
        if passes > 1 {
            format!(" x {passes} passes")
        } else {
            String::new()
        },
        humantime::format_duration(estimate(&points) * passes as u32),
        dir.display()
    );
    let bar = progress(points.len() * passes);
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(io(Path::new("tokio runtime")))?;
    // The rows of each pass (the last one cut short if a point failed).
    let mut by_pass: Vec<Vec<Row>> = Vec::with_capacity(passes);
    let outcome = runtime.block_on(async {
        for pass in 0..passes {
            let run = Pass {
                index: pass,
                of: passes,
            };
            by_pass.push(Vec::with_capacity(points.len()));
            let rows = by_pass.last_mut().expect("pushed above");
            let order = pass_order(points.len(), pass);
            measure_all(&points, &order, run, &dir, args.port, &bar, rows).await?;
        }
        Ok(())
    });
    bar.finish_and_clear();
    let measured = by_pass.concat();
    let rows = results::median_of(&measured);
    let ratios = results::ratios(&experiment.baseline_pairs(&points), &by_pass);
    let run = Provenance {
        machine: &machine,
        command: std::env::args().collect::<Vec<_>>().join(" "),
        started: humantime::format_rfc3339_seconds(started).to_string(),
        took_s: clock.elapsed().as_secs_f64(),
    };
    write_results(&experiment, &rows, &ratios, &dir, &run)?;
    // The clusters' configuration, certificates and data are of no use after the run.
    let _ = std::fs::remove_dir_all(dir.join("cluster"));
    if let Err((point, source)) = outcome {
        return Err(SweepError::Point {
            point,
            dir,
            source: Box::new(source),
        });
    }
    let mut zero: Vec<usize> = measured
        .iter()
        .filter(|r| r.throughput <= 0.0)
        .map(|r| r.point)
        .collect();
    zero.sort_unstable();
    zero.dedup();
    if !zero.is_empty() {
        return Err(SweepError::ZeroThroughput { points: zero, dir });
    }
    println!("results in {}", dir.display());
    Ok(dir)
}

/// `psmr plot <dir>`: redraws the plots of a results directory.
pub(crate) fn replot(dir: &Path) -> Result<Vec<PathBuf>, SweepError> {
    let experiment = Experiment::load(&dir.join("experiment.toml"))?;
    let rows = results::read_csv(&dir.join("data.csv"))?;
    Ok(crate::plot::draw_all(&experiment, &rows, dir)?)
}

/// `OUT/<experiment file stem>/<UTC timestamp>`, created.
fn results_dir(out: &Path, experiment: &Path, at: SystemTime) -> Result<PathBuf, SweepError> {
    let name = experiment
        .file_stem()
        .map_or_else(|| "experiment".into(), |s| s.to_string_lossy().to_string());
    let stamp: String = humantime::format_rfc3339_seconds(at)
        .to_string()
        .chars()
        .filter(|c| !matches!(c, '-' | ':'))
        .collect();
    let base = out.join(name);
    std::fs::create_dir_all(&base).map_err(io(&base))?;
    for n in 1.. {
        let dir = match n {
            1 => base.join(&stamp),
            _ => base.join(format!("{stamp}-{n}")),
        };
        match std::fs::create_dir(&dir) {
            Ok(()) => return Ok(dir),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(io(&dir)(e)),
        }
    }
    unreachable!("some numbered directory is free")
}

/// Time to start a cluster and see it answer, as an estimate for the bar.
const CLUSTER_START: Duration = Duration::from_secs(2);

fn estimate(points: &[Point]) -> Duration {
    let clusters = crate::experiment::clusters(points);
    let load: Duration = points.iter().map(|p| p.warmup + p.duration).sum();
    load + CLUSTER_START * clusters as u32
}

fn progress(points: usize) -> ProgressBar {
    let bar = ProgressBar::new(points as u64);
    let style = ProgressStyle::with_template(
        "{bar:30} {pos}/{len} points, {elapsed} elapsed, about {eta} left  {msg}",
    )
    .expect("a valid template");
    bar.set_style(style);
    bar
}

fn write_results(
    experiment: &Experiment,
    rows: &[Row],
    ratios: &[Ratio],
    dir: &Path,
    run: &Provenance<'_>,
) -> Result<(), SweepError> {
    results::write_csv(&dir.join("data.csv"), rows)?;
    let summary = dir.join("summary.md");
    let ratio_table = (!ratios.is_empty()).then(|| results::ratio_table(experiment, rows, ratios));
    let text = results::summary(experiment, rows, ratio_table.as_deref(), run);
    std::fs::write(&summary, text).map_err(io(&summary))?;
    if let Some(table) = ratio_table {
        print!("{table}");
    }
    crate::plot::draw_all(experiment, rows, dir)?;
    Ok(())
}

/// Which pass over the points this is.
#[derive(Clone, Copy)]
struct Pass {
    index: usize,
    of: usize,
}

impl std::fmt::Display for Pass {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.of > 1 {
            write!(f, "pass {}/{}  ", self.index + 1, self.of)?;
        }
        Ok(())
    }
}

/// The order in which pass `pass` measures `len` points: forwards, and every
/// other pass backwards. Neighbours are measured back to back either way, but
/// neither is always first: on a shared VM the first minutes after a pause
/// can run faster, and a fixed order gave that to the same engine in every
/// pass.
fn pass_order(len: usize, pass: usize) -> Vec<usize> {
    match pass % 2 {
        0 => (0..len).collect(),
        _ => (0..len).rev().collect(),
    }
}

/// Measures the points in `order` into `rows` (each pass starts its own
/// clusters); a failure names its point.
async fn measure_all(
    points: &[Point],
    order: &[usize],
    pass: Pass,
    dir: &Path,
    port: u16,
    bar: &ProgressBar,
    rows: &mut Vec<Row>,
) -> Result<(), (usize, SweepError)> {
    let mut cluster: Option<(Point, LocalCluster)> = None;
    for (i, p) in order.iter().map(|&i| (i, &points[i])) {
        bar.set_message(describe(p));
        if !cluster.as_ref().is_some_and(|(q, _)| q.same_cluster(p)) {
            // The old cluster stops (and frees its ports) before the next starts.
            drop(cluster.take());
            let started = start_cluster(p, dir, port).await.map_err(|e| (i, e))?;
            cluster = Some((p.clone(), started));
        }
        let (_, local) = cluster.as_mut().expect("started above");
        if let Some(e) = local.children.exited() {
            return Err((i, e.into()));
        }
        let row = measure(i, p, local).await.map_err(|e| (i, e))?;
        bar.suspend(|| {
            println!(
                "{pass}point {i:>3}  {:<48} {:>9.0} cmds/s  p50 {:.3} ms  failed {:.2} %  cpu {:.0} %  sequential {:.0} %",
                describe(p),
                row.throughput,
                row.p50_ms,
                row.fail_rate_pct,
                row.replica_cpu_pct,
                row.sequential_pct
            );
        });
        rows.push(row);
        bar.inc(1);
    }
    Ok(())
}

fn describe(p: &Point) -> String {
    let load = match p.rate {
        Some(rate) => format!("{rate}/s"),
        None => format!("{}x{}", p.clients, p.in_flight),
    };
    format!(
        "{} k={} {} {load} dep {:.0}%",
        p.engine.name(),
        p.workers(),
        p.storage.name(),
        p.dependent * 100.0
    )
}

async fn start_cluster(p: &Point, dir: &Path, port: u16) -> Result<LocalCluster, SweepError> {
    let spec = ClusterSpec {
        engine: p.engine,
        threads: p.threads,
        storage: p.storage,
        service: ServiceKind::Btree,
        preload: p.preload,
        fanout: p.fanout,
        value_size: p.value_size,
        cost: p.cost(),
        port,
        dir: dir.join("cluster"),
        fresh: true,
    };
    let cluster = LocalCluster::start(&spec)?;
    cluster.ready(Duration::from_secs(60)).await?;
    Ok(cluster)
}

/// Runs one point's load on `cluster`, sampling the replicas' CPU time at
/// both ends of the measured interval.
async fn measure(index: usize, p: &Point, cluster: &LocalCluster) -> Result<Row, SweepError> {
    let options = LoadOptions {
        duration: p.duration,
        warmup: p.warmup,
        clients: p.clients,
        in_flight: p.in_flight,
        rate: p.rate,
        dependent: p.dependent,
        seed: p.seed,
        every_replica_answers: false,
        sequential_above: p.sequential_above,
        optimism_below: p.optimism_below,
        value_size: Some(p.value_size),
        timeline: None,
    };
    let load = Load::connect(&cluster.config, &options).await?;
    let window = load.window();
    let pids = cluster.children.replica_pids();
    let cpu = async {
        tokio::time::sleep_until(window.from.into()).await;
        let before = cpu_times(&pids);
        tokio::time::sleep_until(window.end.into()).await;
        cpu_percent(&before, &cpu_times(&pids), window.end - window.from)
    };
    let (report, cpu) = tokio::join!(load.run(window), cpu);
    Ok(Row::new(index, p, &report, cpu))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_other_pass_runs_the_points_backwards() {
        assert_eq!(pass_order(3, 0), [0, 1, 2]);
        assert_eq!(pass_order(3, 1), [2, 1, 0]);
        assert_eq!(pass_order(3, 2), [0, 1, 2]);
        assert!(pass_order(0, 1).is_empty());
    }
}
