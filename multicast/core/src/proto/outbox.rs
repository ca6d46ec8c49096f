//! Where a role puts what it sends. Messages to the node itself (a
//! coordinator's own Prepare and Accept) stay local and are handled before the
//! driver sees anything, so the coordinator votes through the same code path
//! as every other acceptor.

use std::collections::VecDeque;

use super::messages::{Message, Transmit};
use super::types::{Ballot, Instance, NodeId, RingId, Value};

/// An instance this node learned decided while handling an input.
#[derive(Debug)]
pub(crate) struct Decided {
    pub(crate) ring: RingId,
    pub(crate) instance: Instance,
    /// A ballot the value was proposed at (the decision's, or an earlier
    /// one with the same value: a label, not proof of when it was chosen).
    pub(crate) ballot: Ballot,
    pub(crate) value: Value,
}

/// Outgoing messages of one node.
#[derive(Debug)]
pub(crate) struct Outbox {
    me: NodeId,
    pub(crate) remote: VecDeque<Transmit>,
    /// Messages that may leave before the records appended with them are
    /// durable (a coordinator's Accept under durable storage).
    pub(crate) early: VecDeque<Transmit>,
    pub(crate) local: VecDeque<Message>,
    /// Instances newly known to be decided while handling the current input;
    /// the node hands them to its coordinators.
    pub(crate) decided: Vec<Decided>,
}

impl Outbox {
    pub(crate) fn new(me: NodeId) -> Self {
        Outbox {
            me,
            remote: VecDeque::new(),
            early: VecDeque::new(),
            local: VecDeque::new(),
            decided: Vec::new(),
        }
    }

    pub(crate) fn send(&mut self, to: NodeId, message: Message) {
        if to == self.me {
            self.local.push_back(message);
        } else {
            self.remote.push_back(Transmit { to, message });
        }
    }

    /// Queues a message that need not wait for the sync of what was
    /// appended with it (never to this node: those are handled at once).
    pub(crate) fn send_early(&mut self, to: NodeId, message: Message) {
        debug_assert_ne!(to, self.me, "a local message needs no early path");
        self.early.push_back(Transmit { to, message });
    }

    pub(crate) fn me(&self) -> NodeId {
        self.me
    }
}
