//! psmr-btree: the reference service of psmr, a B+-tree key-value store
//! (docs/ARCHITECTURE.md, "The B+-tree service").
//!
//! - [`tree`]: the B+-tree, with its concurrency contract in the types:
//!   `&mut BTree` may change the shape, `&BTree` plus a thread's partition
//!   may only touch that thread's keys without splits or merges;
//! - [`store`]: [`KvStore`], the service's state: the tree of keys and the
//!   byte values beside it;
//! - [`partition`]: range partitioning of the key space over K threads;
//! - [`op`]: operations and responses;
//! - [`service`]: [`BTreeService`], the `Service` and `GroupMapping`
//!   (CC-G, OC-G, safety check) for the replica engines;
//! - [`client`]: [`BTreeClient`], a typed client (`get`, `put`, `insert`,
//!   `delete`, `scan`) on the psmr SDK.

#[cfg(feature = "client")]
pub mod client;
pub mod op;
pub mod partition;
pub mod service;
pub mod store;
pub mod tree;

#[cfg(feature = "client")]
pub use client::{BTreeClient, BTreeError, Scan};
pub use op::{Invalid, MAX_SCAN, MAX_VALUE, Op, Response};
pub use partition::Partitioning;
pub use service::BTreeService;
pub use store::{KvImage, KvStore, value_id, value_of};
pub use tree::{BTree, ContractViolation, SnapshotError, TreeImage, ViolationKind};
