//! psmr-multicast: atomic multicast by Multi-Ring Paxos.
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
//! - [`proto`]: the sans-IO protocol core (no I/O, no clock, no unseeded randomness);
//! - [`storage`]: acceptor storage, in memory or in a durable segmented log;
//! - [`sim`]: a deterministic simulator of rings, acceptors and learners
//!   under message loss, duplication, reordering and crashes, with a checker
//!   of the atomic multicast properties.

pub mod net;
pub mod proto;
pub mod sim;
pub mod storage;
