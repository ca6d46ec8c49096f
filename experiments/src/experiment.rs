//! Experiment files of `psmr sweep`: what to vary, what to keep, what to plot.
//!
//! ```toml
//! title = "P-SMR vs SMR as the share of dependent commands grows"
//! about = "opt-PSMR paper, Figure 2: ..."     # optional, copied into summary.md
//! repeat = 1             # passes over all points (every other one backwards), each with
//!                        #   fresh clusters; data.csv keeps, per point, the pass of median
//!                        #   throughput and the range over all
//!
//! [base]                 # every point starts from these; each field optional (defaults below)
//! engine = "psmr"        # smr | psmr | opt-psmr | cbase | classes
//! threads = 2            # K
//! storage = "memory"     # memory | durable
//! preload = 1000000      # B+-tree keys
//! exec_busy = "0s"       # execution cost added to every command: busy work on a core
//! exec_wait = "0s"       #   and a blocking wait standing for I/O; fixed for a whole run
//! clients = 4            # closed loop: SDK clients ...
//! in_flight = 32         #   ... with this many calls each
//! # rate = 20000         # open loop instead: calls per second
//! dependent = 0.0        # share of inserts and deletes, 0..=1
//! sequential_above = 0.4 # psmr, opt-psmr: clients send every command to g_all while at
//!                        #   least this share of their recent ones need it; 1: never
//! optimism_below = 0.15  # opt-psmr: clients send conservatively while at least this share
//!                        #   of their recent optimistic guesses failed; 1: always guess
//! fanout = 64            # the B+-tree's fanout
//! value_size = 8         # bytes per value, preloaded and inserted
//! warmup = "2s"
//! duration = "5s"        # measured interval
//! seed = 1
//!
//! [sweep]                # lists; every combination is a point, nested in this order
//! engine = ["smr", "psmr"]             # (outermost) engine, threads, storage,
//! dependent = [0.0, 0.5, 1.0]          # clients, in_flight, rate, dependent (innermost)
//!
//! # Optional, top level (before [base]):
//! # order = ["dependent", "engine"]   # these axes outermost, in this order; the others
//! #                                   #   nest inside them as above. Here smr and psmr of one
//! #                                   #   share run back to back (a fresh cluster each).
//! # baseline = "smr"                  # summary.md: each other engine's throughput over this
//! #                                   #   engine's at the same settings, in the same pass
//!
//! [[plot]]               # one PNG and one SVG each
//! name = "throughput"    # file name
//! title = "Throughput"
//! x = "dependent"        # a column of data.csv (see `columns::COLUMNS`)
//! y = ["throughput"]     # one line per column ...
//! series = "engine"      # ... and per value of this column
//! ```
//!
//! The execution cost is not a sweep axis: a run is either with or without
//! it, so no plot mixes the two.

use std::path::Path;
use std::time::Duration;

use psmr_core::cluster::StorageKind;
use psmr_core::{EngineKind, Layout};
use psmr_replica::engine::{EngineConfig, ExecCost};
use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::columns::{Column, one_pass};

/// A parsed, validated experiment file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct Experiment {
    /// What the experiment shows.
    pub(crate) title: String,
    /// Free text: the paper's figure, what to look for.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) about: String,
    /// Passes over all points (the machine is shared: one pass can be
    /// slowed as a whole). Default 1.
    #[serde(default = "one_pass")]
    pub(crate) repeat: u32,
    /// Sweep axes to nest outermost, in this order; the others nest inside
    /// them in the default order. Default none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) order: Vec<Axis>,
    /// The engine the others are compared with, pass by pass. Default none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) baseline: Option<EngineKind>,
    /// The settings every point starts from.
    #[serde(default)]
    pub(crate) base: Point,
    /// The values to vary.
    #[serde(default)]
    pub(crate) sweep: Sweep,
    /// The plots to draw.
    #[serde(default, rename = "plot")]
    pub(crate) plots: Vec<PlotSpec>,
}

/// One measured configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub(crate) struct Point {
    pub(crate) engine: EngineKind,
    pub(crate) threads: usize,
    pub(crate) storage: StorageKind,
    pub(crate) preload: u64,
    #[serde(with = "humantime_serde")]
    pub(crate) exec_busy: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) exec_wait: Duration,
    pub(crate) clients: usize,
    pub(crate) in_flight: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) rate: Option<u64>,
    pub(crate) dependent: f64,
    pub(crate) sequential_above: f64,
    pub(crate) optimism_below: f64,
    pub(crate) fanout: usize,
    pub(crate) value_size: usize,
    #[serde(with = "humantime_serde")]
    pub(crate) warmup: Duration,
    #[serde(with = "humantime_serde")]
    pub(crate) duration: Duration,
    pub(crate) seed: u64,
}

impl Default for Point {
    fn default() -> Self {
        Point {
            engine: EngineKind::OptPsmr,
            threads: 2,
            storage: StorageKind::Memory,
            preload: 1_000_000,
            exec_busy: Duration::ZERO,
            exec_wait: Duration::ZERO,
            clients: 4,
            in_flight: 32,
            rate: None,
            dependent: 0.0,
            sequential_above: psmr_client::ClientOptions::default().sequential_above,
            optimism_below: psmr_client::ClientOptions::default().optimism_below,
            fanout: psmr_core::cluster::ServiceSection::default().fanout,
            value_size: psmr_core::cluster::ServiceSection::default().value_size,
            warmup: Duration::from_secs(2),
            duration: Duration::from_secs(5),
            seed: 1,
        }
    }
}

impl Point {
    /// The worker threads a replica runs (smr: one, whatever `threads` says).
    pub(crate) fn workers(&self) -> usize {
        EngineConfig::new(self.engine, self.threads).workers
    }

    /// The execution cost added to every command.
    pub(crate) fn cost(&self) -> ExecCost {
        ExecCost {
            busy: self.exec_busy,
            wait: self.exec_wait,
        }
    }

    /// Whether `other` can run on the cluster started for `self` (only the
    /// load differs).
    pub(crate) fn same_cluster(&self, other: &Point) -> bool {
        (
            self.engine,
            self.threads,
            self.storage,
            self.preload,
            self.cost(),
        ) == (
            other.engine,
            other.threads,
            other.storage,
            other.preload,
            other.cost(),
        )
    }
}

/// How many clusters a run of `points` starts (one per run of neighbours
/// that can share one).
pub(crate) fn clusters(points: &[Point]) -> usize {
    let changes = points
        .windows(2)
        .filter(|w| !w[0].same_cluster(&w[1]))
        .count();
    usize::from(!points.is_empty()) + changes
}

/// A sweep axis, as `order` names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[allow(missing_docs)]
pub(crate) enum Axis {
    Engine,
    Threads,
    Storage,
    Clients,
    InFlight,
    Rate,
    Dependent,
}

impl Axis {
    /// Every axis, outermost first, as points nest by default.
    const DEFAULT_ORDER: [Axis; 7] = [
        Axis::Engine,
        Axis::Threads,
        Axis::Storage,
        Axis::Clients,
        Axis::InFlight,
        Axis::Rate,
        Axis::Dependent,
    ];
}

/// Values to vary; each list, when not empty, replaces the base value.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
#[allow(missing_docs)]
pub(crate) struct Sweep {
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) engine: Vec<EngineKind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) threads: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) storage: Vec<StorageKind>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) clients: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) in_flight: Vec<usize>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) rate: Vec<u64>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub(crate) dependent: Vec<f64>,
}

/// One plot.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct PlotSpec {
    /// File name, without extension.
    pub(crate) name: String,
    /// Caption.
    pub(crate) title: String,
    /// The column on the x axis.
    pub(crate) x: String,
    /// The columns on the y axis (one line each).
    pub(crate) y: Vec<String>,
    /// One line per value of this column.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) series: Option<String>,
}

/// Why an experiment file is unusable.
#[derive(Debug, Error)]
pub(crate) enum ExperimentError {
    /// The file cannot be read.
    #[error("{path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a valid experiment document.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: String,
        /// What the parser said.
        #[source]
        source: Box<toml::de::Error>,
    },
    /// A field has a value that cannot work.
    #[error("{field}: {reason}")]
    Invalid {
        /// The field, as written in the file.
        field: String,
        /// Why.
        reason: String,
    },
}

fn invalid(field: impl Into<String>, reason: impl Into<String>) -> ExperimentError {
    ExperimentError::Invalid {
        field: field.into(),
        reason: reason.into(),
    }
}

/// The most passes `repeat` may ask for.
const MAX_PASSES: u32 = 100;

impl Experiment {
    /// Reads and validates an experiment file.
    pub(crate) fn load(path: &Path) -> Result<Experiment, ExperimentError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|source| ExperimentError::Read {
            path: shown.clone(),
            source,
        })?;
        Experiment::parse(&text).map_err(|e| match e {
            ExperimentError::Parse { source, .. } => ExperimentError::Parse {
                path: shown,
                source,
            },
            other => other,
        })
    }

    /// Parses and validates an experiment document.
    pub(crate) fn parse(text: &str) -> Result<Experiment, ExperimentError> {
        let experiment: Experiment =
            toml::from_str(text).map_err(|source| ExperimentError::Parse {
                path: String::new(),
                source: Box::new(source),
            })?;
        experiment.validate()?;
        Ok(experiment)
    }

    /// The document, as `psmr plot` reads it back from a results directory.
    pub(crate) fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("an experiment serializes")
    }

    /// Rejects what cannot run or cannot be plotted, naming the field.
    pub(crate) fn validate(&self) -> Result<(), ExperimentError> {
        if self.title.trim().is_empty() {
            return Err(invalid("title", "must not be empty"));
        }
        if !(1..=MAX_PASSES).contains(&self.repeat) {
            return Err(invalid(
                "repeat",
                format!("must be between 1 and {MAX_PASSES}"),
            ));
        }
        check_point("base", &self.base)?;
        for (i, axis) in self.order.iter().enumerate() {
            if self.order[..i].contains(axis) {
                return Err(invalid(format!("order[{i}]"), "names an axis twice"));
            }
        }
        if let Some(baseline) = self.baseline {
            let runs = match self.sweep.engine.is_empty() {
                true => self.base.engine == baseline,
                false => self.sweep.engine.contains(&baseline),
            };
            if !runs {
                return Err(invalid(
                    "baseline",
                    format!("no point runs {}", baseline.name()),
                ));
            }
        }
        let s = &self.sweep;
        for (i, &t) in s.threads.iter().enumerate() {
            check_threads(&format!("sweep.threads[{i}]"), t)?;
        }
        for (i, &d) in s.dependent.iter().enumerate() {
            check_share(&format!("sweep.dependent[{i}]"), d)?;
        }
        let positive = [
            (
                "clients",
                s.clients.iter().map(|&v| v as u64).collect::<Vec<_>>(),
            ),
            ("in_flight", s.in_flight.iter().map(|&v| v as u64).collect()),
            ("rate", s.rate.clone()),
        ];
        for (name, values) in positive {
            if let Some(i) = values.iter().position(|&v| v == 0) {
                return Err(invalid(
                    format!("sweep.{name}[{i}]"),
                    "must be greater than zero",
                ));
            }
        }
        self.validate_plots()
    }

    fn validate_plots(&self) -> Result<(), ExperimentError> {
        for (i, plot) in self.plots.iter().enumerate() {
            let field = |f: &str| format!("plot[{i}].{f}");
            let name_ok = !plot.name.is_empty()
                && plot
                    .name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
            if !name_ok {
                return Err(invalid(
                    field("name"),
                    "must be a file name of letters, digits, '-' and '_'",
                ));
            }
            if self.plots[..i].iter().any(|p| p.name == plot.name) {
                return Err(invalid(
                    field("name"),
                    format!("{:?} is used twice", plot.name),
                ));
            }
            numeric_column(&field("x"), &plot.x)?;
            if plot.y.is_empty() {
                return Err(invalid(field("y"), "names no column"));
            }
            for (j, y) in plot.y.iter().enumerate() {
                numeric_column(&field(&format!("y[{j}]")), y)?;
            }
            if let Some(series) = &plot.series {
                column(&field("series"), series)?;
            }
        }
        Ok(())
    }

    /// Every point, in the order they run: the axes of `order` outermost,
    /// then the others with engine outermost and dependent innermost, so
    /// that by default points that share a cluster are neighbours.
    pub(crate) fn points(&self) -> Vec<Point> {
        let s = &self.sweep;
        let rest = Axis::DEFAULT_ORDER
            .into_iter()
            .filter(|a| !self.order.contains(a));
        let mut points = vec![self.base.clone()];
        for axis in self.order.iter().copied().chain(rest) {
            match axis {
                Axis::Engine => expand(&mut points, &s.engine, |p, &v| p.engine = v),
                Axis::Threads => expand(&mut points, &s.threads, |p, &v| p.threads = v),
                Axis::Storage => expand(&mut points, &s.storage, |p, &v| p.storage = v),
                Axis::Clients => expand(&mut points, &s.clients, |p, &v| p.clients = v),
                Axis::InFlight => expand(&mut points, &s.in_flight, |p, &v| p.in_flight = v),
                Axis::Rate => expand(&mut points, &s.rate, |p, &v| p.rate = Some(v)),
                Axis::Dependent => expand(&mut points, &s.dependent, |p, &v| p.dependent = v),
            }
        }
        points
    }

    /// For each point of an engine other than the baseline, the index of
    /// the baseline's point with otherwise the same settings (if the sweep
    /// has it).
    pub(crate) fn baseline_pairs(&self, points: &[Point]) -> Vec<(usize, usize)> {
        let Some(baseline) = self.baseline else {
            return Vec::new();
        };
        let mut pairs = Vec::new();
        for (i, p) in points.iter().enumerate() {
            if p.engine == baseline {
                continue;
            }
            let twin = Point {
                engine: baseline,
                ..p.clone()
            };
            if let Some(j) = points.iter().position(|q| *q == twin) {
                pairs.push((i, j));
            }
        }
        pairs
    }
}

/// Replaces each point by one copy per value (none: unchanged).
fn expand<T>(points: &mut Vec<Point>, values: &[T], set: impl Fn(&mut Point, &T)) {
    if values.is_empty() {
        return;
    }
    *points = points
        .iter()
        .flat_map(|p| {
            values.iter().map(|v| {
                let mut p = p.clone();
                set(&mut p, v);
                p
            })
        })
        .collect();
}

fn check_point(prefix: &str, p: &Point) -> Result<(), ExperimentError> {
    let field = |f: &str| format!("{prefix}.{f}");
    check_threads(&field("threads"), p.threads)?;
    check_share(&field("dependent"), p.dependent)?;
    check_share(&field("sequential_above"), p.sequential_above)?;
    check_share(&field("optimism_below"), p.optimism_below)?;
    if p.fanout < psmr_btree::tree::MIN_FANOUT {
        return Err(invalid(
            field("fanout"),
            "must be at least 4 (a node must split into two legal nodes)",
        ));
    }
    if let Err(why) = crate::load::check_value_size(p.value_size) {
        return Err(invalid(field("value_size"), &why));
    }
    let positive = [
        ("preload", p.preload),
        ("clients", p.clients as u64),
        ("in_flight", p.in_flight as u64),
        ("rate", p.rate.unwrap_or(1)),
        ("duration", p.duration.as_micros() as u64),
    ];
    match positive.iter().find(|(_, v)| *v == 0) {
        Some((name, _)) => Err(invalid(field(name), "must be greater than zero")),
        None => Ok(()),
    }
}

fn check_threads(field: &str, threads: usize) -> Result<(), ExperimentError> {
    if (1..=Layout::MAX_THREADS).contains(&threads) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!(
                "must be between 1 and {}, not {threads}",
                Layout::MAX_THREADS
            ),
        ))
    }
}

fn check_share(field: &str, share: f64) -> Result<(), ExperimentError> {
    if (0.0..=1.0).contains(&share) {
        Ok(())
    } else {
        Err(invalid(
            field,
            format!("must be between 0 and 1, not {share}"),
        ))
    }
}

fn column(field: &str, name: &str) -> Result<&'static Column, ExperimentError> {
    Column::named(name).ok_or_else(|| {
        invalid(
            field,
            format!(
                "no column {name:?}; columns: {}",
                crate::columns::COLUMNS
                    .iter()
                    .map(|c| c.name)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        )
    })
}

fn numeric_column(field: &str, name: &str) -> Result<(), ExperimentError> {
    if column(field, name)?.is_numeric() {
        Ok(())
    } else {
        Err(invalid(field, format!("column {name:?} is not a number")))
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An experiment with a sweep and one plot (throughput by engine over the dependent share).
    pub(crate) const FILE: &str = r#"
        title = "t"
        [base]
        engine = "psmr"
        warmup = "100ms"
        [sweep]
        engine = ["smr", "opt-psmr"]
        threads = [1, 4]
        dependent = [0.0, 0.5, 1.0]
        [[plot]]
        name = "throughput"
        title = "Throughput"
        x = "dependent"
        y = ["throughput"]
        series = "engine"
    "#;

    fn error(text: &str) -> String {
        Experiment::parse(text).unwrap_err().to_string()
    }

    #[test]
    fn points_nest_with_the_engine_outermost_and_share_clusters_as_neighbours() {
        let e = Experiment::parse(FILE).unwrap();
        let points = e.points();
        assert_eq!(points.len(), 2 * 2 * 3);
        assert_eq!(points[0].engine, EngineKind::Smr);
        assert_eq!((points[0].threads, points[0].dependent), (1, 0.0));
        assert_eq!((points[1].threads, points[1].dependent), (1, 0.5));
        assert_eq!((points[3].threads, points[3].dependent), (4, 0.0));
        assert_eq!(points[6].engine, EngineKind::OptPsmr);
        assert_eq!(points[0].warmup, Duration::from_millis(100));
        assert_eq!(
            clusters(&points),
            4,
            "one cluster per engine and thread count"
        );
        assert_eq!(e.repeat, 1, "one pass unless asked");
        let back = Experiment::parse(&e.to_toml()).unwrap();
        assert_eq!(back, e);
        let twice =
            Experiment::parse(&FILE.replacen("title = \"t\"", "title = \"t\"\nrepeat = 2", 1));
        let twice = twice.unwrap();
        assert_eq!(twice.repeat, 2);
        assert_eq!(Experiment::parse(&twice.to_toml()).unwrap(), twice);
    }

    #[test]
    fn bad_files_are_rejected_naming_the_field() {
        let cases = [
            (
                "dependent = [0.0, 0.5, 1.0]",
                "dependent = [0.0, 1.5]",
                "sweep.dependent[1]: must be between 0 and 1",
            ),
            (
                "threads = [1, 4]",
                "threads = [0]",
                "sweep.threads[0]: must be between 1 and 64",
            ),
            (
                "warmup = \"100ms\"",
                "warmup = \"100ms\"\nsequential_above = 1.2",
                "base.sequential_above: must be between 0 and 1",
            ),
            (
                "warmup = \"100ms\"",
                "warmup = \"100ms\"\noptimism_below = -0.5",
                "base.optimism_below: must be between 0 and 1",
            ),
            (
                "warmup = \"100ms\"",
                "warmup = \"100ms\"\nfanout = 3",
                "base.fanout: must be at least 4 (a node must split into two legal nodes)",
            ),
            (
                "x = \"dependent\"",
                "x = \"engine\"",
                "plot[0].x: column \"engine\" is not a number",
            ),
            (
                "series = \"engine\"",
                "series = \"colour\"",
                "plot[0].series: no column \"colour\"",
            ),
            (
                "y = [\"throughput\"]",
                "y = []",
                "plot[0].y: names no column",
            ),
            (
                "name = \"throughput\"",
                "name = \"a/b\"",
                "plot[0].name: must be a file name",
            ),
            (
                "warmup = \"100ms\"",
                "warmup = \"100ms\"\nclients = 0",
                "base.clients: must be greater than zero",
            ),
            ("title = \"t\"", "title = \" \"", "title: must not be empty"),
            (
                "title = \"t\"",
                "title = \"t\"\nrepeat = 0",
                "repeat: must be between 1 and 100",
            ),
            (
                "title = \"t\"",
                "title = \"t\"\norder = [\"dependent\", \"threads\", \"dependent\"]",
                "order[2]: names an axis twice",
            ),
            (
                "title = \"t\"",
                "title = \"t\"\nbaseline = \"psmr\"",
                "baseline: no point runs psmr",
            ),
        ];
        for (from, to, expected) in cases {
            let text = FILE.replacen(from, to, 1);
            assert!(error(&text).starts_with(expected), "{to}: {}", error(&text));
        }
        assert!(
            error(
                &FILE
                    .replace("seed", "x")
                    .replace("[base]", "[base]\nsed = 2")
            )
            .contains("unknown field `sed`")
        );
        assert!(error(&FILE.replace("\"psmr\"", "\"fast\"")).contains("unknown variant `fast`"));
        let order = FILE.replacen("title = \"t\"", "title = \"t\"\norder = [\"share\"]", 1);
        assert!(error(&order).contains("unknown variant `share`"));
    }

    #[test]
    fn every_experiment_file_of_the_repository_is_valid() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
        let mut files = 0;
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().is_some_and(|e| e == "toml") && !path.ends_with("Cargo.toml") {
                Experiment::load(&path).unwrap_or_else(|e| panic!("{e}"));
                files += 1;
            }
        }
        assert!(
            files >= 7,
            "fig2, fig2-raw, fig3, fig4, fig5, optimism, quick: {files}"
        );
    }

    #[test]
    fn order_puts_its_axes_outermost_and_each_engine_finds_its_baseline_twin() {
        let text = FILE.replacen(
            "title = \"t\"",
            "title = \"t\"\norder = [\"dependent\", \"threads\"]\nbaseline = \"smr\"",
            1,
        );
        let e = Experiment::parse(&text).unwrap();
        let points = e.points();
        let shape: Vec<(f64, usize, EngineKind)> = points
            .iter()
            .map(|p| (p.dependent, p.threads, p.engine))
            .collect();
        use EngineKind::{OptPsmr, Smr};
        assert_eq!(
            shape[..6],
            [
                (0.0, 1, Smr),
                (0.0, 1, OptPsmr),
                (0.0, 4, Smr),
                (0.0, 4, OptPsmr),
                (0.5, 1, Smr),
                (0.5, 1, OptPsmr),
            ]
        );
        assert_eq!(clusters(&points), 12, "no neighbours share a cluster");
        let pairs = e.baseline_pairs(&points);
        assert_eq!(pairs.len(), 6, "one per opt-psmr point");
        for (i, j) in pairs {
            assert_eq!((points[i].engine, points[j].engine), (OptPsmr, Smr));
            let (a, b) = (&points[i], &points[j]);
            assert_eq!((a.dependent, a.threads), (b.dependent, b.threads));
            assert_eq!(j + 1, i, "back to back");
        }
        assert_eq!(Experiment::parse(&e.to_toml()).unwrap(), e);
        assert!(
            Experiment::parse(FILE)
                .unwrap()
                .baseline_pairs(&points)
                .is_empty()
        );
    }
}
