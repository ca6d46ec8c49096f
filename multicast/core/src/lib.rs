//! psmr-core: the bottom layer of psmr, with no I/O, no clock, no threads
//! (docs/ARCHITECTURE.md, "Layers").
//!
//! Everything that the processes, the engines, the SDK and the simulator
//! must agree on lives here, as data and pure functions:
//!
//! - [`proto`]: the sans-IO Multi-Ring Paxos roles (acceptor node,
//!   learner, merger, proposer), their messages and the codec;
//! - [`storage`]: what an acceptor makes durable and recovers (the
//!   implementations are in `psmr-multicast`);
//! - [`wire`]: requests and replies between clients and replicas;
//! - [`service`], [`model`]: what a replicated service implements, for
//!   execution, for clients, and for the dependency-aware engines;
//! - [`engine`]: which execution model, as data;
//! - [`layout`]: which ring carries which group, and the thread cap;
//! - [`cluster`]: the cluster file as data, with `validate()`.
//!
//! ```text
//!  psmr (binary) ─ experiments
//!  psmr-btree, psmr-services            services and their typed clients
//!  psmr-replica (engines + replica process) · psmr-client (SDK)
//!  psmr-multicast (storage, QUIC transport, acceptor process)
//!  psmr-core (this crate)
//! ```

pub mod cluster;
pub mod engine;
pub mod layout;
pub mod model;
pub mod persist;
pub mod proto;
pub mod service;
pub mod storage;
pub mod wire;

pub use engine::{EngineKind, ExecCost};
pub use layout::{Layout, LayoutError};
pub use model::{ClassId, ConflictModel, Placement, ThreadSet};
pub use service::{Group, GroupMapping, Lane, MappingError, Service, ServiceClient, route};
pub use wire::{
    Answerers, ClientId, ClientTag, Marker, Mode, Outcome, Refusal, Reply, Request, RequestId,
    ServiceId,
};
