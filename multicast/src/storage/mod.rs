//! Acceptor storage (docs/ARCHITECTURE.md, "The atomic multicast", storage).
//!
//! An acceptor writes a [`Record`] for every promise and vote before the
//! message that carries it leaves: the node appends records while it handles
//! input, and its driver-facing `poll_transmit` calls [`Storage::sync`] once for
//! everything appended since the last sync (grouped fsync) before it releases
//! any message.
//!
//! Two modes:
//! - [`DurableStorage`]: a segmented append-only log of every record; a
//!   restarted acceptor recovers its promises and accepted values.
//! - [`MemoryStorage`]: accepted values live only in the acceptor's memory.
//!   Promises and a *vote bound* (an upper bound on the instances the acceptor
//!   may have voted for, reserved ahead in chunks) still go to a small durable
//!   metadata log, so that a restarted acceptor knows what it promised and
//!   which instances it may have forgotten votes for. It abstains from Phase 1
//!   until it has learned every decision below that bound. Without this, a
//!   restarted in-memory acceptor would rejoin as if it had promised nothing,
//!   which lets two different values be decided for one instance (the
//!   simulator's broken-acceptor test shows it).

mod durable;
pub mod fs;
mod memory;

pub use durable::{
    Discarded, DurableLog, DurableStorage, LogOptions, MARKER, OpenMode, RecoveryReport,
};
pub use memory::MemoryStorage;
pub use psmr_core::storage::*;
