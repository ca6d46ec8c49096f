//! The driver side of an acceptor's durability, shared by every driver (the
//! QUIC process, the simulator, the tests): [`Persister`] takes each
//! [`Ready`] of an [`AcceptorNode`], appends and syncs its records to a
//! [`Storage`], and only then releases its messages. The node itself never
//! touches storage.

use std::collections::VecDeque;
use std::time::Instant;

use crate::proto::{AcceptorNode, MulticastConfig, NodeError, NodeId, Ready, Transmit};
use crate::storage::{Storage, StorageError};

/// An acceptor node and the storage its records go to.
pub struct Persister {
    /// The sans-IO node.
    pub node: AcceptorNode,
    storage: Box<dyn Storage>,
    /// Messages of a `Ready` whose records are durable, not yet taken.
    released: VecDeque<Transmit>,
}

/// Why a persisted node could not start.
#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    /// Recovery from storage failed.
    #[error("storage recovery failed: {0}")]
    Storage(#[from] StorageError),
    /// The node refused its configuration.
    #[error(transparent)]
    Node(#[from] NodeError),
}

impl Persister {
    /// Recovers node `id` of `config` from `storage`.
    pub fn open(
        id: NodeId,
        config: &MulticastConfig,
        mut storage: Box<dyn Storage>,
        now: Instant,
    ) -> Result<Persister, PersistError> {
        let recovered = storage.recover()?;
        let node = AcceptorNode::new(id, config, recovered, now)?;
        Ok(Persister {
            node,
            storage,
            released: VecDeque::new(),
        })
    }

    /// The next message that may leave: messages of a [`Ready`] come out
    /// only after its records were appended and synced (one sync for all of
    /// them). A storage failure halts the node, and nothing more leaves.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        if let Some(t) = self.released.pop_front() {
            return Some(t);
        }
        let Ready { records, messages } = self.node.poll_ready()?;
        if let Err(e) = self.persist(&records) {
            self.node.storage_failed(e);
            return None;
        }
        self.released = messages;
        self.released.pop_front()
    }

    fn persist(&mut self, records: &[crate::storage::Record]) -> Result<(), StorageError> {
        if records.is_empty() {
            return Ok(());
        }
        for record in records {
            self.storage.append(record)?;
        }
        self.storage.sync()
    }
}

/// The node's own methods (`handle_*`, `poll_timeout`, metrics) through the
/// persister; only `poll_transmit` is the persister's.
impl std::ops::Deref for Persister {
    type Target = AcceptorNode;
    fn deref(&self) -> &AcceptorNode {
        &self.node
    }
}

impl std::ops::DerefMut for Persister {
    fn deref_mut(&mut self) -> &mut AcceptorNode {
        &mut self.node
    }
}
