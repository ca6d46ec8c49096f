//! The processes' common plumbing, and the acceptor process
//! (docs/ARCHITECTURE.md, "Processes").
//!
//! ```text
//!  acceptor:  QUIC ──frames──> Persister ──transmits──> QUIC
//! ```
//!
//! The acceptor runs the sans-IO core on one tokio task ([`net::drive`]).
//! The replica process (`psmr_replica::runtime`) uses the same pieces:
//! [`load_cluster`], [`node_tls`], [`net_config`] and [`Reporter`].

use std::future::Future;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use psmr_core::cluster::{ClusterConfig, ClusterError, StorageKind};
use psmr_core::persist::{PersistError, Persister};
use psmr_core::proto::{LearnerError, NodeError, NodeId};
use thiserror::Error;
use tracing::{error, info, warn};

use crate::net::{self, Hooks, Identity, Inbound, NetConfig, NetError, Network, Tls, TlsError};
use crate::storage::{DurableStorage, LogOptions, MemoryStorage, OpenMode, Storage, StorageError};

/// Reads and validates the cluster file at `path`; relative directories in
/// it resolve against the file's directory.
pub fn load_cluster(path: &Path) -> Result<ClusterConfig, ClusterError> {
    let text = std::fs::read_to_string(path).map_err(|source| ClusterError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    ClusterConfig::parse(&text, path)
}

/// Why a process could not run.
#[derive(Debug, Error)]
pub enum ProcessError {
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
}

/// TLS of node `id`: the cluster CA and the node's certificate.
pub fn node_tls(cluster: &ClusterConfig, id: NodeId) -> Result<Tls, TlsError> {
    let paths = net::CertPaths {
        dir: cluster.tls.dir.clone(),
    };
    let (cert, key) = paths.node(id);
    Tls::load(&paths.ca(), Some(Identity::load(&cert, &key)?))
}

/// The network configuration of node `id`: the address it binds to, every
/// peer's address, its TLS and whether clients must present certificates.
pub fn net_config(cluster: &ClusterConfig, id: NodeId, tls: Tls) -> NetConfig {
    let mut config = NetConfig::new(
        Some(id),
        cluster.listen_address(id),
        cluster.addresses(),
        tls,
    );
    config.require_client_certificates = cluster.tls.require_client_certificates;
    if !config.require_client_certificates {
        warn!(node = %id, "tls.require_client_certificates = false: anyone who reaches this node and holds the (public) CA certificate can read and write, and clients without a certificate are not told apart");
    }
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
) -> Result<(), ProcessError> {
    let entry = cluster.acceptor(id).ok_or(ProcessError::NotInCluster {
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
    let mut node = Persister::open(id, &cluster.multicast(), storage, Instant::now()).map_err(
        |e| match e {
            PersistError::Storage(e) => ProcessError::Storage(e),
            PersistError::Node(e) => ProcessError::Node(e),
        },
    )?;
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
            Err(ProcessError::Storage(e))
        }
        None => Ok(()),
    }
}

/// How often a process logs its counters (at `info`).
pub const REPORT_EVERY: Duration = Duration::from_secs(10);

/// How often a process copies its counters into its metrics.
pub const PUBLISH_EVERY: Duration = Duration::from_secs(1);

/// Publishes a process's counters, and its network's, as metrics every
/// [`PUBLISH_EVERY`], and logs them every [`REPORT_EVERY`].
pub struct Reporter {
    next_publish: Instant,
    next_log: Instant,
    net: Network,
}

impl Reporter {
    /// A reporter of `net`'s counters; the first log is due in [`REPORT_EVERY`].
    pub fn new(net: &Network) -> Reporter {
        let now = Instant::now();
        Reporter {
            next_publish: now,
            next_log: now + REPORT_EVERY,
            net: net.clone(),
        }
    }

    /// If due: `publish` copies the process's own counters into its
    /// metrics, `log` logs them; the network's follow each.
    pub fn report(&mut self, publish: impl FnOnce(), log: impl FnOnce()) {
        let now = Instant::now();
        if now < self.next_publish {
            return;
        }
        self.next_publish = now + PUBLISH_EVERY;
        publish();
        let s = self.net.stats();
        crate::metrics::publish_net(&self.net);
        if now < self.next_log {
            return;
        }
        self.next_log = now + REPORT_EVERY;
        log();
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        info!(
            connections = load(&s.connections),
            bad_frames = load(&s.bad_frames),
            bad_identity = load(&s.bad_identity),
            bad_datagrams = load(&s.bad_datagrams),
            kernel_drops = self.net.kernel_drops(),
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

impl Hooks<Persister> for AcceptorHooks {
    fn other(&mut self, _node: &mut Persister, inbound: Inbound) {
        warn!(from = %inbound.from, purpose = ?inbound.purpose, "an acceptor takes only protocol messages and proposals");
    }

    fn after(&mut self, node: &mut Persister) -> bool {
        self.reporter.report(
            || crate::metrics::publish_acceptor(&node.node),
            || {
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
                    refused_proposals = m.refused_proposals,
                    "acceptor counters"
                );
            },
        );
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
