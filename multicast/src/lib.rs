//! psmr-multicast: the I/O of psmr's Multi-Ring Paxos atomic multicast
//! (docs/ARCHITECTURE.md, "Layers"). The protocol itself is sans-IO, in
//! `psmr_core::proto`; this crate gives it a disk, a network and a process.
//!
//! Each multicast group is a *ring*: an odd set of acceptors that orders the
//! group's commands with Ring Paxos (Phase 2 travels along the ring). A
//! learner subscribes to several rings and merges their decisions
//! deterministically, M instances per ring per turn, so that every learner
//! with the same subscriptions delivers the same sequence. Idle rings propose
//! skips (rate leveling) so that they never hold a merge back.
//!
//! ```text
//!  Proposer ──Propose──> ring coordinator ──Accept──> acceptor ──> ... ──> decider
//!                                                                          │ Decide
//!                            Learner (per ring, in order, at most once) <──┘
//!                               └──> Merger (per replica thread: {g_i, g_all}) ──> commands
//! ```
//!
//! - [`storage`]: acceptor storage, in memory or in a durable segmented log;
//! - [`net`]: the QUIC transport and the driver loop of a sans-IO core;
//! - [`process`]: the acceptor process, and what every process shares
//!   (loading the cluster file, TLS, counters).
//!
//! The deterministic simulator that drives the same core under faults is
//! the `psmr-sim` crate (tests only).

pub mod metrics;
pub mod net;
pub mod process;
pub mod storage;
