//! The acceptor and replica processes (DESIGN.md section 2).
//!
//! ```text
//!  acceptor:  QUIC ──frames──> AcceptorNode ──transmits──> QUIC
//!  replica:   QUIC ──decisions──> Learner ──deliveries──> Engine ──replies──> client connections
//!                        client hello ──> a reply stream opened on the client's connection
//! ```
//!
//! Both run the sans-IO core on one tokio task ([`psmr_multicast::net::drive`]);
//! the engine's workers are OS threads, and a cheap batch for a parked
//! worker runs on this task's thread instead (`engine::worker`).

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use psmr_multicast::net::{
    self, Hooks, Identity, Inbound, NetConfig, NetError, Network, Purpose, Tls, TlsError,
};
use psmr_multicast::proto::{AcceptorNode, Learner, LearnerError, NodeError, NodeId, RingId};
use psmr_multicast::storage::{
    DurableStorage, LogOptions, MemoryStorage, OpenMode, Storage, StorageError,
};
use thiserror::Error;
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::cluster::{ClusterConfig, StorageKind};
use crate::engine::{Engine, EngineError, ReplySink};
use crate::model::ConflictModel;
use crate::wire::{ClientId, Reply};

/// Why a process could not run.
#[derive(Debug, Error)]
pub enum RuntimeError {
    /// The node id is not an acceptor (or replica) of the cluster file.
    #[error("node {id} is not {role} in the cluster file")]
    NotInCluster {
        /// The id.
        id: u32,
        /// `an acceptor` or `a replica`.
        role: &'static str,
    },
    /// Certificates could not be loaded.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The network could not start.
    #[error(transparent)]
    Net(#[from] NetError),
    /// Storage could not be opened or failed.
    #[error("storage: {0}")]
    Storage(#[from] StorageError),
    /// The acceptor core refused to start.
    #[error(transparent)]
    Node(#[from] NodeError),
    /// The learner refused to start.
    #[error(transparent)]
    Learner(#[from] LearnerError),
    /// The engine failed.
    #[error(transparent)]
    Engine(#[from] EngineError),
}

/// TLS of node `id`: the cluster CA and the node's certificate.
pub fn node_tls(cluster: &ClusterConfig, id: NodeId) -> Result<Tls, TlsError> {
    let paths = net::CertPaths {
        dir: cluster.tls.dir.clone(),
    };
    let (cert, key) = paths.node(id);
    Tls::load(&paths.ca(), Some(Identity::load(&cert, &key)?))
}

fn net_config(cluster: &ClusterConfig, id: NodeId, tls: Tls) -> NetConfig {
    let mut config = NetConfig::new(
        Some(id),
        cluster.addresses().get(&id).copied(),
        cluster.addresses(),
        tls,
    );
    config.require_client_certificates = cluster.tls.require_client_certificates;
    config
}

/// Runs acceptor `id` until `shutdown` resolves or its storage fails.
/// `mode` says whether its data directory must already hold its storage or
/// is initialized now, for a new member (`psmr acceptor --init`).
pub async fn run_acceptor(
    cluster: &ClusterConfig,
    id: NodeId,
    mode: OpenMode,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let entry =
        cluster
            .acceptors
            .iter()
            .find(|a| a.id == id.0)
            .ok_or(RuntimeError::NotInCluster {
                id: id.0,
                role: "an acceptor",
            })?;
    let dir = entry.data_dir();
    let storage: Box<dyn Storage> = match entry.storage {
        StorageKind::Memory => Box::new(MemoryStorage::open(&dir.join("metadata"), mode)?),
        StorageKind::Durable => {
            let (storage, report) =
                DurableStorage::open(&dir.join("log"), LogOptions::default(), mode)?;
            if let Some(cut) = &report.discarded {
                match cut.damage {
                    None => {
                        info!(node = %id, file = %cut.path.display(), offset = cut.offset, bytes = cut.bytes, "cut a torn write off the end of the log (never acknowledged)")
                    }
                    Some(damage) => {
                        warn!(node = %id, file = %cut.path.display(), offset = cut.offset, bytes = cut.bytes, %damage, "cut damaged records off the end of the log; they may have held acknowledged votes, so this acceptor stays out of elections until it has learned every decision they could have touched")
                    }
                }
            }
            Box::new(storage)
        }
    };
    let mut node = AcceptorNode::new(id, &cluster.multicast(), storage, Instant::now())?;
    let (net, mut inbox) = Network::start(net_config(cluster, id, node_tls(cluster, id)?))?;
    info!(node = %id, address = %entry.address, storage = ?entry.storage, "acceptor listening");
    let amnesiac = node.amnesiac_rings();
    if amnesiac > 0 {
        warn!(node = %id, rings = amnesiac, "restarted without its accepted values (memory storage): it stays out of elections until it has caught up; meanwhile its rings tolerate no other failure");
    }
    let mut hooks = AcceptorHooks {
        halted: false,
        reporter: Reporter::new(&net),
        amnesiac,
    };
    tokio::select! {
        () = net::drive(&mut node, &net, &mut inbox, &mut hooks) => {}
        () = shutdown => info!(node = %id, "acceptor shutting down"),
    }
    net.close();
    match node.take_halted() {
        Some(e) => {
            error!(node = %id, error = %e, "the acceptor stopped");
            Err(RuntimeError::Storage(e))
        }
        None => Ok(()),
    }
}

/// How often a process logs its counters (at `info`).
const REPORT_EVERY: Duration = Duration::from_secs(10);

/// Logs a process's counters, and its network's, every [`REPORT_EVERY`].
struct Reporter {
    next: Instant,
    net: Network,
}

impl Reporter {
    fn new(net: &Network) -> Reporter {
        Reporter {
            next: Instant::now() + REPORT_EVERY,
            net: net.clone(),
        }
    }

    /// If a report is due: `counters` logs the process's own, then the
    /// network counters follow.
    fn report(&mut self, counters: impl FnOnce()) {
        let now = Instant::now();
        if now < self.next {
            return;
        }
        self.next = now + REPORT_EVERY;
        counters();
        let s = self.net.stats();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        info!(
            connections = load(&s.connections),
            bad_frames = load(&s.bad_frames),
            bad_identity = load(&s.bad_identity),
            dropped = load(&s.dropped),
            connect_failures = load(&s.connect_failures),
            unknown_destination = load(&s.unknown_destination),
            stalled = load(&s.stalled),
            "network counters"
        );
    }
}

struct AcceptorHooks {
    halted: bool,
    reporter: Reporter,
    /// Rings in which this acceptor lost its values and has not caught up.
    amnesiac: usize,
}

impl Hooks<AcceptorNode> for AcceptorHooks {
    fn other(&mut self, _node: &mut AcceptorNode, inbound: Inbound) {
        warn!(from = %inbound.from, purpose = ?inbound.purpose, "an acceptor takes only protocol messages and proposals");
    }

    fn after(&mut self, node: &mut AcceptorNode) -> bool {
        self.reporter.report(|| {
            let m = node.metrics();
            info!(
                node = %node.id(),
                decided = m.decided,
                commands = m.commands_received,
                dropped = m.commands_dropped,
                forwarded = m.commands_forwarded,
                elections = m.elections,
                step_downs = m.step_downs,
                prepares_refused = m.prepares_refused,
                unknown_peer = m.unknown_peer,
                unknown_ring = m.unknown_ring,
                bad_frames = m.bad_frames,
                "acceptor counters"
            );
        });
        if self.amnesiac > 0 {
            self.amnesiac = node.amnesiac_rings();
            if self.amnesiac == 0 {
                info!("caught up after a restart: takes part in elections again");
            }
        }
        self.halted = node.halted().is_some();
        !self.halted
    }
}

/// A client's reply stream, and the connection it is on.
struct Route {
    connection: usize,
    sender: mpsc::Sender<Vec<u8>>,
}

/// Replies routed to the clients that announced themselves.
///
/// Clients greet every replica periodically; a greeting on the connection a
/// client is already answered on changes nothing, one on a new connection
/// (the client reconnected) moves its replies there. A reply whose request
/// asked another replica to answer is not sent.
pub struct ReplyRouter {
    /// This replica's node id.
    replica: u32,
    clients: RwLock<HashMap<ClientId, Route>>,
    /// Replies to clients without a reply stream (they resend and get the
    /// answer from the table of executed requests).
    pub undeliverable: AtomicU64,
}

impl ReplyRouter {
    /// The router of replica `replica`.
    pub fn new(replica: NodeId) -> ReplyRouter {
        ReplyRouter {
            replica: replica.0,
            clients: RwLock::default(),
            undeliverable: AtomicU64::new(0),
        }
    }

    /// Whether `client` is answered on `connection` (a stable id) already.
    fn answers(&self, client: ClientId, connection: usize) -> bool {
        let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
        clients
            .get(&client)
            .is_some_and(|r| r.connection == connection && !r.sender.is_closed())
    }

    fn register(&self, client: ClientId, connection: usize, sender: mpsc::Sender<Vec<u8>>) {
        self.clients
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .insert(client, Route { connection, sender });
    }
}

impl ReplySink for ReplyRouter {
    /// One write per client of the batch: the frames of the replies this
    /// replica sends, concatenated.
    fn replies(&self, _thread: usize, replies: &mut Vec<Reply>) {
        let mut batches: Vec<(ClientId, Vec<u8>, u64)> = Vec::new();
        for reply in replies.drain(..) {
            if !reply.answerers.include(self.replica) {
                continue;
            }
            let at = match batches.iter().position(|(c, _, _)| *c == reply.client) {
                Some(at) => at,
                None => {
                    batches.push((reply.client, Vec::new(), 0));
                    batches.len() - 1
                }
            };
            let (_, frames, count) = &mut batches[at];
            net::push_frame(frames, &reply.encode());
            *count += 1;
        }
        let mut closed = Vec::new();
        {
            let clients = self.clients.read().unwrap_or_else(|e| e.into_inner());
            for (client, frames, count) in batches {
                let sent = clients.get(&client).map(|r| r.sender.try_send(frames));
                if !matches!(sent, Some(Ok(()))) {
                    self.undeliverable.fetch_add(count, Ordering::Relaxed);
                }
                if let Some(Err(mpsc::error::TrySendError::Closed(_))) = sent {
                    closed.push(client);
                }
            }
        }
        if !closed.is_empty() {
            let mut clients = self.clients.write().unwrap_or_else(|e| e.into_inner());
            // Only if still closed: the client may have greeted us anew meanwhile.
            clients.retain(|c, r| !closed.contains(c) || !r.sender.is_closed());
        }
    }
}

struct ReplicaHooks<S: ConflictModel> {
    engine: Engine<S>,
    router: Arc<ReplyRouter>,
    net: Network,
    failed: Option<EngineError>,
    reporter: Reporter,
}

impl<S: ConflictModel> Hooks<Learner> for ReplicaHooks<S> {
    fn other(&mut self, _learner: &mut Learner, inbound: Inbound) {
        if inbound.purpose != Purpose::ClientHello {
            return;
        }
        match postcard::from_bytes::<u64>(&inbound.body) {
            Ok(client) => {
                let (client, connection) = (ClientId(client), inbound.connection.stable_id());
                if !self.router.answers(client, connection) {
                    let sender = self.net.open(inbound.connection, Purpose::Replies);
                    self.router.register(client, connection, sender);
                }
            }
            Err(_) => warn!(from = %inbound.from, "malformed client hello"),
        }
    }

    fn after(&mut self, learner: &mut Learner) -> bool {
        while let Some(d) = learner.poll_delivery() {
            if let Err(e) = self.engine.deliver(d.ring, d.instance, d.value) {
                self.failed = Some(e);
                return false;
            }
        }
        let router = &self.router;
        self.reporter.report(|| {
            let m = learner.metrics();
            info!(
                instances = m.delivered_instances,
                commands = m.delivered_commands,
                skips = m.delivered_skips,
                duplicate_commands = m.duplicate_commands,
                recovery_requests = m.recovery_requests,
                unknown_peer = m.unknown_peer,
                bad_frames = m.bad_frames,
                undeliverable_replies = router.undeliverable.load(Ordering::Relaxed),
                "replica counters"
            );
        });
        if let Some(lost) = learner.lost().next() {
            error!(ring = %lost.ring, from = lost.from, below = lost.below, "decisions were trimmed before this replica got them; it must be rebuilt");
            return false;
        }
        true
    }
}

/// Runs replica `id` of `service` from `state` until `shutdown` resolves.
pub async fn run_replica<S: ConflictModel>(
    cluster: &ClusterConfig,
    id: NodeId,
    service: Arc<S>,
    state: S::State,
    shutdown: impl Future<Output = ()>,
) -> Result<(), RuntimeError> {
    let entry =
        cluster
            .replicas
            .iter()
            .find(|r| r.id == id.0)
            .ok_or(RuntimeError::NotInCluster {
                id: id.0,
                role: "a replica",
            })?;
    let multicast = cluster.multicast();
    let rings: Vec<RingId> = multicast.rings.iter().map(|r| r.id).collect();
    let mut learner = Learner::new(id, &multicast, &rings, Instant::now())?;
    let router = Arc::new(ReplyRouter::new(id));
    let engine = Engine::start(service, state, cluster.engine_config(), router.clone())?;
    let (net, mut inbox) = Network::start(net_config(cluster, id, node_tls(cluster, id)?))?;
    info!(node = %id, address = %entry.address, engine = entry.engine.kind().name(), threads = entry.threads, "replica listening");
    let mut hooks = ReplicaHooks {
        engine,
        router,
        net: net.clone(),
        failed: None,
        reporter: Reporter::new(&net),
    };
    tokio::select! {
        () = net::drive(&mut learner, &net, &mut inbox, &mut hooks) => {}
        () = shutdown => info!(node = %id, "replica shutting down"),
    }
    net.close();
    if let Some(e) = hooks.failed {
        return Err(e.into());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{Answerers, Outcome, RequestId};

    fn reply(client: u64, request: u64, answerers: Answerers) -> Reply {
        Reply {
            client: ClientId(client),
            request: Some(RequestId(request)),
            outcome: Outcome::Done(bytes::Bytes::from_static(b"ok")),
            execution_ns: 0,
            answerers,
        }
    }

    /// The requests of one batch, as the client reads them from its stream.
    fn received(frames: &[u8]) -> Vec<u64> {
        let mut ids = Vec::new();
        let mut rest = frames;
        while !rest.is_empty() {
            let len = u32::from_le_bytes(rest[..4].try_into().unwrap()) as usize;
            let reply = Reply::decode(&rest[4..4 + len]).unwrap();
            ids.push(reply.request.unwrap().0);
            rest = &rest[4 + len..];
        }
        ids
    }

    #[test]
    fn a_replica_sends_only_the_replies_it_is_asked_for() {
        let router = ReplyRouter::new(NodeId(101));
        let (tx, mut rx) = mpsc::channel(4);
        router.register(ClientId(7), 1, tx);
        let mut replies = vec![
            reply(7, 1, Answerers::One(101)),
            reply(7, 2, Answerers::One(102)),
            reply(7, 3, Answerers::All),
        ];
        router.replies(0, &mut replies);
        assert!(replies.is_empty());
        assert_eq!(received(&rx.try_recv().unwrap()), [1, 3]);
        let mut others = vec![reply(7, 4, Answerers::One(102))];
        router.replies(1, &mut others);
        assert!(rx.try_recv().is_err(), "nothing to send, no write");
        assert_eq!(router.undeliverable.load(Ordering::Relaxed), 0);
    }
}
