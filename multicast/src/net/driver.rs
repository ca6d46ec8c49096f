//! The driver of a sans-IO core over the network: the same loop runs an
//! acceptor node and a learner.
//!
//! ```text
//! loop {
//!     wait for a frame or the core's next timeout
//!     hand every frame that is there to the core (or to the hooks)
//!     run due timers
//!     send what the core wants sent, then let the hooks take outputs
//! }
//! ```
//!
//! An acceptor's sync runs on a blocking thread when early messages left
//! before it (a coordinator's Accepts under durable storage): the driver
//! awaits it, so the node takes no input meanwhile, but the runtime's
//! network tasks send those Accepts while the disk works, and the
//! successor's write overlaps this node's.

use std::time::Instant;

use tokio::sync::mpsc;

use super::network::{ANONYMOUS_BASE, Inbound, Network};
use super::stream::Purpose;
use psmr_core::ClientTag;
use psmr_core::persist::{PendingSync, Persister};
use psmr_core::proto::codec::{self, DEFAULT_MAX_FRAME};
use psmr_core::proto::{Learner, Message, NodeId, Transmit};
use psmr_core::storage::StorageError;

/// A sans-IO protocol core the driver can run.
pub trait Core {
    /// A frame body from `from`.
    fn handle_frame(&mut self, now: Instant, from: NodeId, body: &[u8]);
    /// A frame body a client (certificate tag `tag`) sent on a proposal
    /// stream. A core that takes no client proposals drops it.
    fn handle_client_frame(&mut self, now: Instant, from: NodeId, tag: ClientTag, body: &[u8]);
    /// Timers.
    fn handle_timeout(&mut self, now: Instant);
    /// The next message to send.
    fn poll_transmit(&mut self) -> Option<Transmit>;
    /// When to call `handle_timeout` next.
    fn poll_timeout(&self) -> Option<Instant>;
    /// Once `poll_transmit` has nothing more: a sync to run off the
    /// driver's thread before more messages can leave. None by default.
    fn take_sync(&mut self) -> Option<PendingSync> {
        None
    }
    /// A sync from [`Core::take_sync`] is done (`None`: it was lost with
    /// its thread).
    fn finish_sync(&mut self, _done: Option<PendingSync>) {}
}

/// An acceptor: the node, and its storage persisting each `Ready` before
/// its messages go out.
impl Core for Persister {
    fn handle_frame(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        self.node.handle_frame(now, from, body);
    }
    fn handle_client_frame(&mut self, now: Instant, from: NodeId, tag: ClientTag, body: &[u8]) {
        self.node.handle_client_frame(now, from, tag, body);
    }
    fn handle_timeout(&mut self, now: Instant) {
        self.node.handle_timeout(now);
    }
    /// Syncs inline unless early messages left since the last sync; then
    /// the sync waits for [`Core::take_sync`].
    fn poll_transmit(&mut self) -> Option<Transmit> {
        match self.overlapping() {
            true => self.poll_unsynced(),
            false => Persister::poll_transmit(self),
        }
    }
    fn poll_timeout(&self) -> Option<Instant> {
        self.node.poll_timeout()
    }
    fn take_sync(&mut self) -> Option<PendingSync> {
        Persister::take_sync(self)
    }
    fn finish_sync(&mut self, done: Option<PendingSync>) {
        match done {
            Some(done) => Persister::finish_sync(self, done),
            None => self.node.storage_failed(StorageError::Io {
                op: "sync",
                path: Default::default(),
                source: std::io::Error::other("the sync thread panicked"),
            }),
        }
    }
}

impl Core for Learner {
    fn handle_frame(&mut self, now: Instant, from: NodeId, body: &[u8]) {
        Learner::handle_frame(self, now, from, body);
    }
    fn handle_client_frame(&mut self, _: Instant, _: NodeId, _: ClientTag, _: &[u8]) {}
    fn handle_timeout(&mut self, now: Instant) {
        Learner::handle_timeout(self, now);
    }
    fn poll_transmit(&mut self) -> Option<Transmit> {
        Learner::poll_transmit(self)
    }
    fn poll_timeout(&self) -> Option<Instant> {
        Learner::poll_timeout(self)
    }
}

/// What a process adds to the driver loop.
pub trait Hooks<C> {
    /// A frame of a purpose the core does not take (client hellos at a replica).
    fn other(&mut self, core: &mut C, inbound: Inbound);
    /// After each round: take outputs (deliveries), check health. Returning
    /// false stops the driver.
    fn after(&mut self, core: &mut C) -> bool;
}

/// Hooks that take nothing (an acceptor).
pub struct NoHooks;

impl<C> Hooks<C> for NoHooks {
    fn other(&mut self, _core: &mut C, _inbound: Inbound) {}
    fn after(&mut self, _core: &mut C) -> bool {
        true
    }
}

/// Frames handled per round before timers and sends get their turn.
const ROUND: usize = 512;

/// Runs `core` until the inbox closes or a hook says stop.
pub async fn drive<C: Core>(
    core: &mut C,
    net: &Network,
    inbox: &mut mpsc::Receiver<Inbound>,
    hooks: &mut impl Hooks<C>,
) {
    loop {
        let deadline = core.poll_timeout().map(tokio::time::Instant::from_std);
        tokio::select! {
            inbound = inbox.recv() => {
                let Some(first) = inbound else { return };
                dispatch(core, hooks, first);
                for _ in 1..ROUND {
                    match inbox.try_recv() {
                        Ok(next) => dispatch(core, hooks, next),
                        Err(_) => break,
                    }
                }
            }
            () = sleep(deadline) => {}
        }
        core.handle_timeout(Instant::now());
        flush(core, net).await;
        if !hooks.after(core) {
            return;
        }
        flush(core, net).await;
    }
}

async fn sleep(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

fn dispatch<C: Core>(core: &mut C, hooks: &mut impl Hooks<C>, inbound: Inbound) {
    match inbound.purpose {
        Purpose::Propose if inbound.from.0 >= ANONYMOUS_BASE => {
            core.handle_client_frame(Instant::now(), inbound.from, inbound.tag, &inbound.body)
        }
        Purpose::Protocol | Purpose::Propose => {
            core.handle_frame(Instant::now(), inbound.from, &inbound.body)
        }
        Purpose::ClientHello | Purpose::Replies | Purpose::TransferRequest | Purpose::Transfer => {
            hooks.other(core, inbound)
        }
    }
}

/// Sends everything the core produced, running the syncs it hands out on
/// a blocking thread in between.
pub async fn flush<C: Core>(core: &mut C, net: &Network) {
    loop {
        send_all(core, net);
        let Some(pending) = core.take_sync() else {
            return;
        };
        let done = tokio::task::spawn_blocking(move || pending.run()).await;
        core.finish_sync(done.ok());
    }
}

/// Sends what the core has for now.
///
/// A message sent to several peers in a row (a decision to every learner)
/// is encoded once: the comparison is cheap, batches shared between the
/// copies compare by pointer.
fn send_all<C: Core>(core: &mut C, net: &Network) {
    let mut last: Option<(Message, Vec<u8>)> = None;
    while let Some(t) = core.poll_transmit() {
        let frame = match &last {
            Some((message, frame)) if *message == t.message => frame.clone(),
            _ => {
                let Ok(frame) = codec::frame(&t.message, DEFAULT_MAX_FRAME) else {
                    continue;
                };
                last = Some((t.message, frame.clone()));
                frame
            }
        };
        net.send(t.to, Purpose::Protocol, frame);
    }
}
