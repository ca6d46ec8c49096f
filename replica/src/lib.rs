//! psmr-replica: parallel execution of a replicated service, and the replica
//! process (docs/ARCHITECTURE.md, "Execution").
//!
//! A service implements `psmr_core::Service` (execution, the opt-PSMR
//! safety check, a digest) and `psmr_core::GroupMapping` (CC-G and OC-G).
//! An [`Engine`] consumes the delivered streams of the multicast rings and
//! executes the commands on K worker threads, in parallel where the groups
//! allow, synchronizing all threads for commands of `g_all`.
//!
//! ```text
//!  multicast learner ──(ring, instance, value)──> Engine::deliver
//!        per-thread Merger {g_i, g_all} ──> execute ──> ReplySink
//! ```
//!
//! - [`engine`]: `smr`, `psmr`, `opt-psmr`, `cbase`, `classes`;
//! - [`table`]: executed requests, so that a resend is answered, not re-executed;
//! - [`rendezvous`]: the synchronous-mode handoff;
//! - [`runtime`]: the replica process;
//! - [`store`], [`transfer`]: checkpoint files, and fetching them from another replica;
//! - [`workload`]: streams for tests and benchmarks, and their sequential execution.

mod checkpointing;
pub mod engine;
pub mod rendezvous;
pub mod runtime;
mod shim;
pub mod store;
pub mod table;
pub mod transfer;
pub mod workload;

#[cfg(feature = "planted-bugs")]
pub use engine::PlantedBug;
pub use engine::{
    Engine, EngineConfig, EngineError, EngineKind, ExecCost, ExecMetrics, Finished, Jitter, Policy,
    ReplySink,
};
pub use rendezvous::WaitPolicy;
