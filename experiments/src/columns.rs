//! The measured row of a point (a line of `data.csv`) and the columns that
//! experiment files may name in `x`, `y` and `series`. Both the experiment
//! parser (which checks the names) and the results (which write and plot the
//! rows) read it.

use serde::{Deserialize, Serialize};

/// One measured point, as a line of `data.csv`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[allow(missing_docs)]
pub(crate) struct Row {
    pub(crate) point: usize,
    pub(crate) engine: String,
    pub(crate) threads: usize,
    pub(crate) storage: String,
    pub(crate) preload: u64,
    pub(crate) exec_busy_us: f64,
    pub(crate) exec_wait_us: f64,
    pub(crate) clients: usize,
    pub(crate) in_flight: usize,
    pub(crate) rate: Option<u64>,
    pub(crate) dependent_pct: f64,
    pub(crate) warmup_s: f64,
    pub(crate) duration_s: f64,
    pub(crate) seed: u64,
    pub(crate) throughput: f64,
    pub(crate) per_thread: f64,
    pub(crate) p50_ms: f64,
    pub(crate) p99_ms: f64,
    pub(crate) p999_ms: f64,
    pub(crate) mean_ms: f64,
    pub(crate) completed: u64,
    pub(crate) errors: u64,
    pub(crate) failed: u64,
    pub(crate) fail_rate_pct: f64,
    pub(crate) passed_mean_ms: f64,
    pub(crate) failed_mean_ms: f64,
    pub(crate) replica_cpu_pct: f64,
    /// The clients' sequential fallback threshold and the share of calls it
    /// sent to `g_all` (absent in files written before the fallback: 0).
    #[serde(default)]
    pub(crate) sequential_above: f64,
    #[serde(default)]
    pub(crate) sequential_pct: f64,
    /// Passes that measured this point; the row is the one of median
    /// throughput (absent in files written before `repeat` existed).
    #[serde(default = "one_pass")]
    pub(crate) passes: u32,
    /// Lowest and highest throughput over the passes.
    #[serde(default)]
    pub(crate) throughput_min: Option<f64>,
    #[serde(default)]
    pub(crate) throughput_max: Option<f64>,
}

/// One pass, what rows written before `repeat` existed measured.
pub(crate) fn one_pass() -> u32 {
    1
}

/// A column of `data.csv` that experiment files can plot.
pub(crate) struct Column {
    /// Name in experiment files.
    pub(crate) name: &'static str,
    /// Axis label, with the unit.
    pub(crate) label: &'static str,
    value: Value,
}

enum Value {
    Number(fn(&Row) -> f64),
    Text(fn(&Row) -> String),
}

impl Column {
    /// The column called `name`.
    pub(crate) fn named(name: &str) -> Option<&'static Column> {
        COLUMNS.iter().find(|c| c.name == name)
    }

    /// Whether it can be an axis.
    pub(crate) fn is_numeric(&self) -> bool {
        matches!(self.value, Value::Number(_))
    }

    /// Its value in `row`, if it is a number.
    pub(crate) fn number(&self, row: &Row) -> Option<f64> {
        match self.value {
            Value::Number(f) => Some(f(row)),
            Value::Text(_) => None,
        }
    }

    /// Its value in `row` as a legend label.
    pub(crate) fn text(&self, row: &Row) -> String {
        match self.value {
            Value::Number(f) => format!("{} {}", trim(f(row)), self.name),
            Value::Text(f) => f(row),
        }
    }
}

/// A number without a useless fraction.
fn trim(v: f64) -> String {
    if v.fract() == 0.0 {
        format!("{v:.0}")
    } else {
        format!("{v:.2}")
    }
}

macro_rules! number {
    ($name:literal, $label:literal, $field:ident) => {
        Column {
            name: $name,
            label: $label,
            value: Value::Number(|r| r.$field as f64),
        }
    };
}

/// The columns experiment files name in `x`, `y` and `series`.
pub(crate) static COLUMNS: &[Column] = &[
    Column {
        name: "engine",
        label: "engine",
        value: Value::Text(|r| r.engine.clone()),
    },
    Column {
        name: "storage",
        label: "acceptor storage",
        value: Value::Text(|r| r.storage.clone()),
    },
    number!("threads", "threads per replica (K)", threads),
    number!("clients", "clients", clients),
    number!("in_flight", "calls in flight per client", in_flight),
    Column {
        name: "rate",
        label: "offered load (commands/s)",
        value: Value::Number(|r| r.rate.unwrap_or(0) as f64),
    },
    number!("dependent", "dependent commands (%)", dependent_pct),
    number!("throughput", "throughput (commands/s)", throughput),
    Column {
        name: "throughput_min",
        label: "lowest throughput over the passes (commands/s)",
        value: Value::Number(|r| r.throughput_min.unwrap_or(r.throughput)),
    },
    Column {
        name: "throughput_max",
        label: "highest throughput over the passes (commands/s)",
        value: Value::Number(|r| r.throughput_max.unwrap_or(r.throughput)),
    },
    number!(
        "per_thread",
        "throughput per thread (commands/s)",
        per_thread
    ),
    number!("p50", "latency p50 (ms)", p50_ms),
    number!("p99", "latency p99 (ms)", p99_ms),
    number!("p999", "latency p99.9 (ms)", p999_ms),
    number!("mean", "mean latency (ms)", mean_ms),
    number!("failed", "failed safety checks", failed),
    number!(
        "fail_rate",
        "failed safety checks (% of commands)",
        fail_rate_pct
    ),
    number!(
        "passed_mean",
        "mean latency of passed commands (ms)",
        passed_mean_ms
    ),
    number!(
        "failed_mean",
        "mean latency of failed commands (ms)",
        failed_mean_ms
    ),
    number!("cpu", "replica CPU (% of one core)", replica_cpu_pct),
    number!(
        "sequential",
        "commands sent to g_all by the sequential fallback (%)",
        sequential_pct
    ),
];
