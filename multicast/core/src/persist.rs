//! The driver side of an acceptor's durability, shared by every driver (the
//! QUIC process, the simulator, the tests): [`Persister`] takes each
//! [`Ready`] of an [`AcceptorNode`], appends its records to a [`Storage`],
//! releases its early messages at once and the others only after a sync.
//! The node itself never touches storage.
//!
//! ```text
//! poll_unsynced: Ready ──records──> storage (appended)
//!                      ──early────> out now (a coordinator's Accept; its vote counts later)
//!                      ──messages─> held
//! sync:          storage synced ──> held out, node.synced() (Durable notices next)
//! ```
//!
//! A driver either calls [`Persister::poll_transmit`], which syncs inline,
//! or, to run the sync elsewhere (another thread; the simulator's disk
//! latency), drains [`Persister::poll_unsynced`] and then calls
//! [`Persister::sync`] or [`Persister::take_sync`] / [`Persister::finish_sync`]
//! while [`Persister::needs_sync`] holds.

use std::collections::VecDeque;
use std::time::Instant;

use crate::proto::{AcceptorNode, MulticastConfig, NodeError, NodeId, Ready, Transmit};
use crate::storage::{Storage, StorageError};

/// An acceptor node and the storage its records go to.
pub struct Persister {
    /// The sans-IO node.
    pub node: AcceptorNode,
    /// `None` while a sync runs elsewhere ([`Persister::take_sync`]).
    storage: Option<Box<dyn Storage>>,
    /// Messages that may leave now.
    released: VecDeque<Transmit>,
    /// Messages that leave after the next sync.
    held: VecDeque<Transmit>,
    /// Records were appended since the last sync.
    unsynced: bool,
    /// Early messages left since the last sync: a sync elsewhere is worth
    /// its hand-off (the peers' writes run meanwhile).
    overlapping: bool,
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

/// A sync taken out of its [`Persister`] to run elsewhere: [`PendingSync::run`]
/// it (it owns the storage meanwhile), then hand it back with
/// [`Persister::finish_sync`].
pub struct PendingSync {
    storage: Box<dyn Storage>,
    result: Option<Result<(), StorageError>>,
}

impl PendingSync {
    /// Syncs the storage.
    pub fn run(mut self) -> PendingSync {
        self.result = Some(self.storage.sync());
        self
    }
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
            storage: Some(storage),
            released: VecDeque::new(),
            held: VecDeque::new(),
            unsynced: false,
            overlapping: false,
        })
    }

    /// The next message that may leave, syncing where one must wait for it
    /// (one sync for every record appended since the last). A storage
    /// failure halts the node, and nothing more leaves.
    pub fn poll_transmit(&mut self) -> Option<Transmit> {
        loop {
            if let Some(t) = self.poll_unsynced() {
                return Some(t);
            }
            if !self.needs_sync() {
                return None;
            }
            self.sync();
        }
    }

    /// The next message that may leave without a sync: one released by
    /// the last sync, or an early one. Takes the node's next [`Ready`]
    /// (appending its records) when there is none.
    pub fn poll_unsynced(&mut self) -> Option<Transmit> {
        loop {
            if let Some(t) = self.released.pop_front() {
                return Some(t);
            }
            let storage = self.storage.as_mut()?;
            let Ready {
                records,
                early,
                messages,
            } = self.node.poll_ready()?;
            let appended = records.iter().try_for_each(|r| storage.append(r));
            if let Err(e) = appended {
                self.fail(e);
                return None;
            }
            self.unsynced |= !records.is_empty();
            self.overlapping |= !early.is_empty();
            self.released.extend(early);
            self.held.extend(messages);
            if !self.unsynced {
                self.released.append(&mut self.held);
            }
        }
    }

    /// Whether messages or records wait for a sync.
    pub fn needs_sync(&self) -> bool {
        self.unsynced && self.storage.is_some()
    }

    /// Whether early messages left since the last sync, so that running
    /// the sync on another thread lets the network send them meanwhile.
    pub fn overlapping(&self) -> bool {
        self.overlapping
    }

    /// Syncs here: the held messages are released, and the node learns its
    /// records are durable.
    pub fn sync(&mut self) {
        if let Some(pending) = self.take_sync() {
            self.finish_sync(pending.run());
        }
    }

    /// Takes the storage out for a sync elsewhere, if one is needed.
    /// Nothing is released until [`Persister::finish_sync`].
    pub fn take_sync(&mut self) -> Option<PendingSync> {
        if !self.needs_sync() {
            return None;
        }
        let storage = self.storage.take()?;
        Some(PendingSync {
            storage,
            result: None,
        })
    }

    /// A sync taken with [`Persister::take_sync`] is done.
    pub fn finish_sync(&mut self, pending: PendingSync) {
        self.storage = Some(pending.storage);
        match pending.result {
            Some(Ok(())) => {
                self.unsynced = false;
                self.overlapping = false;
                self.released.append(&mut self.held);
                self.node.synced();
            }
            Some(Err(e)) => self.fail(e),
            None => {} // not run: the records stay unsynced
        }
    }

    fn fail(&mut self, error: StorageError) {
        self.unsynced = false;
        self.overlapping = false;
        self.held.clear();
        self.released.clear();
        self.node.storage_failed(error);
    }
}

/// The node's own methods (`handle_*`, `poll_timeout`, metrics) through the
/// persister; only the transmit and sync methods are the persister's.
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
