//! The sans-IO protocol core of Multi-Ring Paxos.
//!
//! Nothing here does I/O, reads a clock, or draws unseeded randomness: time
//! comes in as `now`, messages come in through `handle_*` and go out through
//! `poll_transmit` (an acceptor node: `poll_ready`, with the records to make
//! durable first; the driver persists them, see [`crate::persist`]).
//! The QUIC transport and the simulator are two drivers of the same code.
//!
//! | role | type | inputs | outputs |
//! |---|---|---|---|
//! | acceptor process (acceptor of its rings, coordinator of those it leads) | [`AcceptorNode`] | `handle_message`, `handle_frame`, `handle_timeout` | `poll_transmit`, `poll_timeout` |
//! | learner (a replica process) | [`Learner`] | `handle_message`, `handle_frame`, `handle_timeout` | `poll_transmit`, `poll_timeout`, `poll_delivery` |
//! | merge of a learner's rings (one per replica thread) | [`Merger`] | `push` | `poll` |
//! | proposer (a client) | [`Proposer`] | `propose`, `done`, `handle_timeout` | `poll_transmit`, `poll_timeout` |

mod acceptor;
mod catchup;
pub mod codec;
mod config;
mod context;
mod coordinator;
mod dedupe;
mod failure;
mod leadership;
mod learner;
mod merger;
mod messages;
mod metrics;
mod node;
mod outbox;
mod overlap;
mod proposer;
mod seqmap;
mod types;

#[cfg(feature = "planted-bugs")]
pub use config::PlantedBug;
pub use config::{
    ConfigError, MAX_RING_ACCEPTORS, MulticastConfig, Params, RingConfig, SLOT_BYTES,
};
pub use learner::{DedupeImage, Delivery, ImageError, Learner, LearnerError, Lost};
pub use merger::{MergeCut, MergeError, Merged, Merger};
pub use messages::{
    Accept, Checkpointed, Chosen, Decide, Durable, Heartbeat, LearnRequest, Message, Nack, Prepare,
    Promise, PromisedSlot, Propose, RingBeat, Transmit, Trimmed,
};
pub use metrics::{LearnerMetrics, NodeMetrics};
pub use node::{AcceptorNode, NodeError, Ready, RingPositions};
pub use proposer::{ProposeError, Proposer};
pub use seqmap::SeqMap;
pub use types::{
    Ballot, Batch, BatchError, Command, CommandId, Instance, NodeId, ProposerId, RingId, Value,
    VoteSet,
};
