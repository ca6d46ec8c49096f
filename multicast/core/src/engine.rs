//! The execution model as data: which engine a cluster runs
//! ([`EngineKind`]) and the work added to every command ([`ExecCost`]).
//! The engines themselves live in `psmr-replica`; clients, cluster files and
//! experiments name them through these types alone.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Which execution model.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum EngineKind {
    /// One thread, one ring (`g_all`): the sequential baseline.
    #[serde(rename = "smr")]
    Smr,
    /// K threads; clients map with CC-G.
    #[serde(rename = "psmr")]
    Psmr,
    /// K threads; clients map with OC-G and optimistic commands are safety-checked.
    #[serde(rename = "opt-psmr")]
    OptPsmr,
    /// One ring; a parallelizer's dependency graph feeds K workers (CBASE).
    #[serde(rename = "cbase")]
    Cbase,
    /// One ring; request classes mapped to a reconfigurable number of threads.
    #[serde(rename = "classes")]
    Classes,
}

impl EngineKind {
    /// Every engine, in the order the papers introduce them.
    pub const ALL: [EngineKind; 5] = [
        EngineKind::Smr,
        EngineKind::Psmr,
        EngineKind::OptPsmr,
        EngineKind::Cbase,
        EngineKind::Classes,
    ];

    /// The name used in configuration files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Smr => "smr",
            EngineKind::Psmr => "psmr",
            EngineKind::OptPsmr => "opt-psmr",
            EngineKind::Cbase => "cbase",
            EngineKind::Classes => "classes",
        }
    }

    /// Whether the engine merges the thread rings `g_1..g_K` besides `g_all`.
    pub fn has_thread_rings(self) -> bool {
        matches!(self, EngineKind::Psmr | EngineKind::OptPsmr)
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Work added to every executed command, standing for a costlier service:
/// `busy` keeps the core busy, `wait` blocks the thread without using a core
/// (I/O, the simulated resources of CBASE's micro-benchmark). Every result
/// measured with a cost names it. The engines spend it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ExecCost {
    /// Busy work per command.
    pub busy: Duration,
    /// Blocking wait per command.
    pub wait: Duration,
}

impl ExecCost {
    /// Whether the cost is zero.
    pub fn is_zero(&self) -> bool {
        self.busy.is_zero() && self.wait.is_zero()
    }
}

impl std::fmt::Display for ExecCost {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_zero() {
            return f.write_str("none");
        }
        write!(f, "busy {:?} + wait {:?} per command", self.busy, self.wait)
    }
}
