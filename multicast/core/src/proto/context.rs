//! What a role needs while it handles one input: the time, the parameters,
//! the failure detector's view, and where to put records and messages.

use std::sync::Arc;
use std::time::Instant;

use super::config::{Params, RingConfig};
use super::failure::FailureDetector;
use super::messages::Message;
use super::metrics::NodeMetrics;
use super::outbox::Outbox;
use super::types::NodeId;
use crate::storage::{Record, StorageError};

pub(crate) struct Ctx<'a> {
    pub(crate) now: Instant,
    pub(crate) params: &'a Params,
    pub(crate) detector: &'a FailureDetector,
    pub(crate) out: &'a mut Outbox,
    /// Records appended since the last [`super::Ready`]: the messages queued
    /// with them leave only once the driver has made them durable.
    pub(crate) records: &'a mut Vec<Record>,
    pub(crate) metrics: &'a mut NodeMetrics,
}

impl Ctx<'_> {
    /// Appends a record; the messages queued with it leave only after the
    /// driver has made it durable. Infallible here (the driver persists);
    /// the `Result` keeps the handlers' error path for the failures the core
    /// does detect itself (`StorageError::AllAmnesiac`).
    pub(crate) fn append(&mut self, record: Record) -> Result<(), StorageError> {
        self.records.push(record);
        Ok(())
    }

    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        self.out.send(to, message);
    }

    /// Sends before the records appended so far are durable (see
    /// [`Outbox::send_early`]).
    pub(crate) fn send_early(&mut self, to: NodeId, message: Message) {
        self.out.send_early(to, message);
    }

    pub(crate) fn me(&self) -> NodeId {
        self.out.me()
    }
}

/// A ring as seen from one of its acceptors.
#[derive(Clone, Debug)]
pub(crate) struct Membership {
    pub(crate) config: Arc<RingConfig>,
    /// This node's position in the ring order.
    pub(crate) me: usize,
}

impl Membership {
    pub(crate) fn n(&self) -> usize {
        self.config.acceptors.len()
    }

    pub(crate) fn quorum(&self) -> usize {
        self.config.quorum()
    }

    pub(crate) fn is_member(&self, node: NodeId) -> bool {
        self.config.position(node).is_some()
    }

    /// The first acceptor after this one, in ring order, that is not
    /// suspected and for whose position `wanted` holds.
    pub(crate) fn successor(
        &self,
        ctx: &Ctx<'_>,
        wanted: impl Fn(usize) -> bool,
    ) -> Option<NodeId> {
        let n = self.n();
        (1..n)
            .map(|step| (self.me + step) % n)
            .filter(|&pos| wanted(pos))
            .map(|pos| self.config.acceptors[pos])
            .find(|&node| !ctx.detector.suspects(node, ctx.now))
    }

    /// The other acceptors that are not suspected.
    pub(crate) fn live_peers(&self, ctx: &Ctx<'_>) -> Vec<NodeId> {
        self.config
            .acceptors
            .iter()
            .copied()
            .filter(|&a| a != ctx.me() && !ctx.detector.suspects(a, ctx.now))
            .collect()
    }
}
