//! psmr-replica: parallel execution of a replicated service.
//!
//! A service implements [`Service`] (execution, the opt-PSMR safety check, a
//! digest) and [`GroupMapping`] (CC-G and OC-G). An [`Engine`] consumes the
//! delivered streams of the multicast rings and executes the commands on K
//! worker threads, in parallel where the groups allow, synchronizing all
//! threads for commands of `g_all` (DESIGN.md section 5).
//!
//! ```text
//!  multicast learner ──(ring, instance, value)──> Engine::deliver
//!        per-thread Merger {g_i, g_all} ──> execute ──> ReplySink
//! ```
//!
//! - [`wire`]: requests and replies;
//! - [`service`]: the traits a service implements;
//! - [`engine`]: `smr`, `psmr`, `opt-psmr`, `cbase`, `classes`;
//! - [`model`]: the conflict rules and request classes of `cbase` and `classes`;
//! - [`table`]: executed requests, so that a resend is answered, not re-executed;
//! - [`rendezvous`]: the synchronous-mode handoff;
//! - [`workload`]: streams for tests and benchmarks, and their sequential execution;
//! - [`services`]: the null service and the linked list.

pub mod cluster;
pub mod engine;
pub mod model;
pub mod rendezvous;
pub mod runtime;
pub mod service;
pub mod services;
mod shim;
pub mod table;
pub mod wire;
pub mod workload;

pub use engine::{
    Engine, EngineConfig, EngineError, EngineKind, ExecCost, ExecMetrics, Finished, Jitter, Policy,
    ReplySink,
};
pub use model::{ClassId, ConflictModel, Placement, ThreadSet};
pub use rendezvous::WaitPolicy;
pub use service::{Group, GroupMapping, Lane, MappingError, Service, route};
pub use wire::{Answerers, ClientId, Mode, Outcome, Refusal, Reply, Request, RequestId, ServiceId};
