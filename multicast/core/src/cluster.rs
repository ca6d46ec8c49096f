//! The cluster file as data (docs/ARCHITECTURE.md, "The cluster file"): one
//! TOML document that every process of a cluster reads. This module parses
//! and checks text; reading the file is the caller's (`psmr_multicast::cluster::load`).
//!
//! ```toml
//! [[acceptor]]
//! id = 1
//! address = "127.0.0.1:7101"  # IP:port or host:port (resolved when the file is read)
//! # listen = "0.0.0.0:7101"    # where it binds, if the others reach it at another address
//! # metrics = "127.0.0.1:9101"  # Prometheus over HTTP; default: the same IP and port over TCP
//! storage = "memory"            # or "durable"; default memory
//! data_dir = "data/acceptor-1"  # default data/acceptor-<id>; relative paths (here and in
//!                               # [tls]) are relative to this file's directory
//!
//! [[replica]]
//! id = 101
//! address = "127.0.0.1:7201"
//! engine = "opt-psmr"           # smr | psmr | opt-psmr | cbase | classes
//! threads = 2                   # K; every replica runs the same engine and K
//! # policy = "jump"             # classes only: fixed (default) | paper | jump
//! # data_dir = "data/replica-101" # checkpoints; default data/replica-<id>
//!
//! [[ring]]                      # optional: ring 0 is g_all, rings 1..=K are psmr's and opt-psmr's threads';
//! id = 0                        # when absent, each ring gets every acceptor in the order of
//! acceptors = [1, 2, 3]         # the [[acceptor]] entries (the first coordinates every ring)
//!
//! [tls]
//! dir = "certs"                 # ca.pem, node-<id>.pem/.key, client.pem/.key
//! require_client_certificates = true # default; false admits any client that trusts the CA
//!
//! [multicast]                   # every field optional; see psmr_core::proto::Params
//! window = 128
//! batch_delay = "0ms"
//!
//! [checkpoint]                 # replicas; see CheckpointSection
//! every = "60s"                 # default 60s; "0s": no time trigger
//! every_commands = 1000000      # default 1,000,000; 0: no command trigger
//! keep = 2                      # checkpoints kept in the replica's data_dir
//!
//! [service]
//! kind = "btree"                # btree | null | list
//! preload = 1000000             # B+-tree: every even key of [0, 2 * preload)
//! key_space = 2000000           # keys are partitioned over [0, key_space)
//! fanout = 64
//! value_size = 8                # B+-tree: bytes per preloaded value
//! # exec_busy = "20us"          # execution cost added to every command: busy work on a core,
//! # exec_wait = "100us"         # and a blocking wait standing for I/O (no core); default none
//! ```
//!
//! [`ClusterConfig::validate`] rejects what cannot work, naming the field.

use std::collections::{BTreeSet, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::engine::{EngineKind, ExecCost};
use crate::layout::Layout;
use crate::proto::{ConfigError, MulticastConfig, NodeId, Params, RingConfig};

/// A whole cluster.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterConfig {
    /// The acceptor processes.
    #[serde(rename = "acceptor", default)]
    pub acceptors: Vec<AcceptorEntry>,
    /// The replica processes.
    #[serde(rename = "replica", default)]
    pub replicas: Vec<ReplicaEntry>,
    /// Rings; derived from the acceptors when empty.
    #[serde(rename = "ring", default, skip_serializing_if = "Vec::is_empty")]
    pub rings: Vec<RingEntry>,
    /// Certificates.
    #[serde(default)]
    pub tls: TlsSection,
    /// Multicast parameters; each field defaults to [`Params::default`].
    #[serde(default)]
    pub multicast: Params,
    /// The replicated service.
    #[serde(default)]
    pub service: ServiceSection,
    /// Replica checkpoints.
    #[serde(default)]
    pub checkpoint: CheckpointSection,
}

/// When replicas take checkpoints (docs/ARCHITECTURE.md, "Checkpoints"):
/// a replica proposes the next checkpoint marker once `every` has passed or
/// `every_commands` commands were delivered since the last checkpoint,
/// whichever comes first; a zero turns that trigger off, both zero turn
/// checkpoints off.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointSection {
    /// Time between checkpoints. Default 60 s.
    #[serde(default = "default_checkpoint_every", with = "humantime_serde")]
    pub every: Duration,
    /// Commands between checkpoints. Default 1,000,000.
    #[serde(default = "default_checkpoint_commands")]
    pub every_commands: u64,
    /// Checkpoints kept on disk, the newest first (an older one is used
    /// when the newest is damaged). Default 2; at least 1.
    #[serde(default = "default_checkpoint_keep")]
    pub keep: usize,
}

fn default_checkpoint_every() -> Duration {
    Duration::from_secs(60)
}

fn default_checkpoint_commands() -> u64 {
    1_000_000
}

fn default_checkpoint_keep() -> usize {
    2
}

impl Default for CheckpointSection {
    fn default() -> Self {
        CheckpointSection {
            every: default_checkpoint_every(),
            every_commands: default_checkpoint_commands(),
            keep: default_checkpoint_keep(),
        }
    }
}

impl CheckpointSection {
    /// Whether replicas take checkpoints at all.
    pub fn enabled(&self) -> bool {
        !self.every.is_zero() || self.every_commands > 0
    }
}

/// One acceptor process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AcceptorEntry {
    /// Node id, unique in the cluster.
    pub id: u32,
    /// Address it listens on (QUIC, UDP): an IP address and port, or a
    /// host name and port resolved when the file is read.
    #[serde(deserialize_with = "resolve")]
    pub address: SocketAddr,
    /// Address it binds to, where that differs from `address`, where the
    /// others reach it (a node behind address translation or a proxy, or
    /// `psmr chaos`'s fault-injecting relay in front of it). Default: `address`.
    #[serde(
        default,
        deserialize_with = "resolve_some",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
    /// Where it serves Prometheus metrics over HTTP (TCP). Default: the
    /// same IP address and port as `address`, over TCP.
    #[serde(
        default,
        deserialize_with = "resolve_some",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics: Option<SocketAddr>,
    /// Storage mode. Default memory.
    #[serde(default)]
    pub storage: StorageKind,
    /// Where its log (durable) or metadata (memory) goes. Default `data/acceptor-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl AcceptorEntry {
    /// Where its metrics are served, default or configured.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics.unwrap_or(self.address)
    }

    /// The data directory, default or configured.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("data/acceptor-{}", self.id)))
    }
}

/// Acceptor storage mode (docs/ARCHITECTURE.md, "The atomic multicast").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// Values in memory; promises and vote bounds on disk.
    #[default]
    Memory,
    /// Everything on disk, fsynced before votes leave.
    Durable,
}

impl StorageKind {
    /// The name used in cluster files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Memory => "memory",
            StorageKind::Durable => "durable",
        }
    }
}

/// One replica process.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicaEntry {
    /// Node id, unique in the cluster.
    pub id: u32,
    /// Address it listens on (QUIC, UDP), as an acceptor's.
    #[serde(deserialize_with = "resolve")]
    pub address: SocketAddr,
    /// Address it binds to, where that differs from `address`, where the
    /// others reach it (a node behind address translation or a proxy, or
    /// `psmr chaos`'s fault-injecting relay in front of it). Default: `address`.
    #[serde(
        default,
        deserialize_with = "resolve_some",
        skip_serializing_if = "Option::is_none"
    )]
    pub listen: Option<SocketAddr>,
    /// Where it serves Prometheus metrics, as an acceptor's.
    #[serde(
        default,
        deserialize_with = "resolve_some",
        skip_serializing_if = "Option::is_none"
    )]
    pub metrics: Option<SocketAddr>,
    /// Execution engine.
    pub engine: EngineKind,
    /// Worker threads (K); for `classes`, the most that can be active.
    pub threads: usize,
    /// `classes`: when to change the number of active threads. `fixed`
    /// (default: all threads active), `paper` (Algorithm 7) or `jump`; the
    /// last two start with one active thread and keep between 1 and `threads`.
    #[serde(default, skip_serializing_if = "is_default")]
    pub policy: PolicyName,
    /// Where its checkpoints go. Default `data/replica-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_dir: Option<PathBuf>,
}

impl ReplicaEntry {
    /// Where its metrics are served, default or configured.
    pub fn metrics_address(&self) -> SocketAddr {
        self.metrics.unwrap_or(self.address)
    }

    /// The data directory, default or configured.
    pub fn data_dir(&self) -> PathBuf {
        self.data_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(format!("data/replica-{}", self.id)))
    }
}

/// An address as written in the file: `IP:port`, or `host:port` resolved
/// now (the first address it resolves to).
fn resolve<'de, D: serde::Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    use std::net::ToSocketAddrs;
    let text = String::deserialize(d)?;
    if let Ok(addr) = text.parse() {
        return Ok(addr);
    }
    if !text.contains(':') {
        return Err(serde::de::Error::custom(format!(
            "{text:?} has no port: write host:port or IP:port"
        )));
    }
    let mut addrs = text
        .to_socket_addrs()
        .map_err(|e| serde::de::Error::custom(format!("cannot resolve {text:?}: {e}")))?;
    addrs
        .next()
        .ok_or_else(|| serde::de::Error::custom(format!("{text:?} resolves to no address")))
}

fn resolve_some<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    resolve(d).map(Some)
}

fn is_default<T: Default + PartialEq>(value: &T) -> bool {
    *value == T::default()
}

/// A reconfiguration policy as named in the file.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PolicyName {
    /// Never reconfigure.
    #[default]
    Fixed,
    /// The reconfiguration paper's Algorithm 7 (period 2,000, 20 %).
    Paper,
    /// Jump to all or the fewest threads (period 500; 5 % / 20 %).
    Jump,
}

/// One ring, listed explicitly.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RingEntry {
    /// Ring id: 0 is `g_all`, 1..=K the threads'.
    pub id: u16,
    /// Acceptor ids, in ring order (the first is the initial coordinator).
    pub acceptors: Vec<u32>,
}

/// Certificate files.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// Directory of `ca.pem`, `node-<id>.pem`/`.key` and `client.pem`/`.key`. Default `certs`.
    #[serde(default = "default_cert_dir")]
    pub dir: PathBuf,
    /// Whether clients must present a certificate of the cluster CA. Default
    /// true: the CA certificate is public, so without this anyone who
    /// reaches the ports can read and write, and clients cannot be told apart.
    #[serde(default = "yes")]
    pub require_client_certificates: bool,
}

fn default_cert_dir() -> PathBuf {
    PathBuf::from("certs")
}

fn yes() -> bool {
    true
}

impl Default for TlsSection {
    fn default() -> Self {
        TlsSection {
            dir: default_cert_dir(),
            require_client_certificates: true,
        }
    }
}

/// Which service the replicas run, and its settings.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// The service. Default `btree`.
    #[serde(default)]
    pub kind: ServiceKind,
    /// B+-tree: keys preloaded (every even key of `[0, 2 * preload)`);
    /// list: elements preloaded. Default 1,000,000.
    #[serde(default = "default_preload")]
    pub preload: u64,
    /// B+-tree: the key space partitioned over the threads. Default `2 * preload`.
    #[serde(default)]
    pub key_space: Option<u64>,
    /// B+-tree: keys per node. Default 64.
    #[serde(default = "default_fanout")]
    pub fanout: usize,
    /// B+-tree: bytes per preloaded value (key `2i` holds `i` little-endian,
    /// cut or padded with zeros), at most [`MAX_VALUE_SIZE`]. Default 8.
    #[serde(default = "default_value_size")]
    pub value_size: usize,
    /// Busy work added to every executed command (see [`ExecCost`]). Default none.
    #[serde(default, with = "humantime_serde::option")]
    pub exec_busy: Option<Duration>,
    /// A blocking wait added to every executed command, standing for I/O
    /// (see [`ExecCost`]). Default none.
    #[serde(default, with = "humantime_serde::option")]
    pub exec_wait: Option<Duration>,
}

fn default_preload() -> u64 {
    1_000_000
}

fn default_fanout() -> usize {
    64
}

fn default_value_size() -> usize {
    8
}

/// The largest value the B+-tree service stores: 1 MiB, so that a request
/// always fits in one frame.
pub const MAX_VALUE_SIZE: usize = 1 << 20;

impl Default for ServiceSection {
    fn default() -> Self {
        ServiceSection {
            kind: ServiceKind::default(),
            preload: default_preload(),
            key_space: None,
            fanout: default_fanout(),
            value_size: default_value_size(),
            exec_busy: None,
            exec_wait: None,
        }
    }
}

impl ServiceSection {
    /// The execution cost added to every command.
    pub fn cost(&self) -> ExecCost {
        ExecCost {
            busy: self.exec_busy.unwrap_or_default(),
            wait: self.exec_wait.unwrap_or_default(),
        }
    }

    /// The key space, default or configured.
    pub fn key_space(&self) -> u64 {
        self.key_space
            .unwrap_or(self.preload.saturating_mul(2).max(1))
    }
}

/// The services psmr ships.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ServiceKind {
    /// The B+-tree key-value store.
    #[default]
    Btree,
    /// The null service.
    Null,
    /// The linked list.
    List,
}

impl ServiceKind {
    /// The name used in cluster files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            ServiceKind::Btree => "btree",
            ServiceKind::Null => "null",
            ServiceKind::List => "list",
        }
    }
}

/// Why a cluster file was rejected.
#[derive(Debug, Error)]
pub enum ClusterError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML for a cluster.
    #[error("{path}: {source}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What the parser reported (it names the line and the field).
        #[source]
        source: toml::de::Error,
    },
    /// A section that needs entries has none.
    #[error("{field}: at least one entry is required")]
    Empty {
        /// `acceptor` or `replica`.
        field: &'static str,
    },
    /// Two processes share a node id.
    #[error("{field}[{index}].id: node id {id} is used twice")]
    DuplicateId {
        /// `acceptor` or `replica`.
        field: &'static str,
        /// Position in the list.
        index: usize,
        /// The id.
        id: u32,
    },
    /// Two processes share an address.
    #[error("{field}[{index}].{what}: {address} is used twice")]
    DuplicateAddress {
        /// `acceptor` or `replica`.
        field: &'static str,
        /// Position in the list.
        index: usize,
        /// `address` or `metrics`.
        what: &'static str,
        /// The address.
        address: SocketAddr,
    },
    /// An address with port 0 (any port: others could not find the node).
    #[error("{field}[{index}].{what}: port 0; give the port the node listens on")]
    PortZero {
        /// `acceptor` or `replica`.
        field: &'static str,
        /// Position in the list.
        index: usize,
        /// `address` or `metrics`.
        what: &'static str,
    },
    /// Replicas disagree on the engine or K.
    #[error(
        "replica[{index}].{field}: every replica must run the same engine with the same number of threads as replica[0]"
    )]
    ReplicasDisagree {
        /// Position in the list.
        index: usize,
        /// `engine` or `threads`.
        field: &'static str,
    },
    /// K is zero, or smr with more than one thread.
    #[error(
        "replica[{index}].threads: {threads} threads with engine {engine}; smr has 1, the other engines 1 to 64"
    )]
    Threads {
        /// Position in the list.
        index: usize,
        /// The value.
        threads: usize,
        /// The engine's name.
        engine: &'static str,
    },
    /// The rings do not match K.
    #[error(
        "ring: {engine} with K = {threads} needs rings {expected:?} (ring 0 is g_all), the file lists {listed:?}"
    )]
    RingsDisagree {
        /// The engine's name.
        engine: &'static str,
        /// K.
        threads: usize,
        /// Ring ids needed.
        expected: Vec<u16>,
        /// Ring ids listed.
        listed: Vec<u16>,
    },
    /// A reconfiguration policy for an engine other than `classes`.
    #[error(
        "replica[{index}].policy: only engine classes reconfigures its threads; remove the policy or use engine = \"classes\""
    )]
    PolicyWithoutClasses {
        /// Position in the list.
        index: usize,
    },
    /// A ring names an acceptor that is not listed.
    #[error("ring[{index}].acceptors: {id} is not an acceptor")]
    UnknownAcceptor {
        /// Position of the ring in the list.
        index: usize,
        /// The id.
        id: u32,
    },
    /// A derived ring would have an even number of acceptors.
    #[error("acceptor: {count} acceptors; rings derived from them need an odd number (2f+1)")]
    EvenAcceptors {
        /// How many.
        count: usize,
    },
    /// `checkpoint.keep` is zero.
    #[error("checkpoint.keep: 0; a replica keeps at least its newest checkpoint")]
    KeepNothing,
    /// `service.value_size` is above [`MAX_VALUE_SIZE`].
    #[error("service.value_size: {0} bytes, at most {MAX_VALUE_SIZE}")]
    ValueSize(usize),
    /// The multicast parameters or rings are invalid.
    #[error(transparent)]
    Multicast(#[from] ConfigError),
}

impl ClusterConfig {
    /// Parses and validates the text of the cluster file at `path`;
    /// relative directories in it resolve against `path`'s directory.
    pub fn parse(text: &str, path: &Path) -> Result<ClusterConfig, ClusterError> {
        let mut config: ClusterConfig =
            toml::from_str(text).map_err(|source| ClusterError::Parse {
                path: path.to_path_buf(),
                source,
            })?;
        config.resolve_relative(path.parent().unwrap_or(Path::new("")));
        config.validate()?;
        Ok(config)
    }

    /// Makes the acceptors' data directories (their default included) and
    /// the certificate directory absolute against `base`, the cluster file's
    /// directory: an acceptor started from another working directory must
    /// find its own storage, never an empty one.
    fn resolve_relative(&mut self, base: &Path) {
        for a in &mut self.acceptors {
            let dir = a.data_dir();
            if dir.is_relative() {
                a.data_dir = Some(base.join(dir));
            }
        }
        for r in &mut self.replicas {
            let dir = r.data_dir();
            if dir.is_relative() {
                r.data_dir = Some(base.join(dir));
            }
        }
        if self.tls.dir.is_relative() {
            self.tls.dir = base.join(&self.tls.dir);
        }
    }

    /// The file's TOML text.
    pub fn to_toml(&self) -> String {
        toml::to_string_pretty(self).expect("a cluster serializes")
    }

    /// A cluster of 3 acceptors and 2 replicas on loopback, from `port`
    /// (acceptors `port..port+3`, replicas `port+100..port+102`).
    pub fn local(port: u16, engine: EngineKind, threads: usize) -> ClusterConfig {
        let at = |p: u16| SocketAddr::from(([127, 0, 0, 1], p));
        ClusterConfig {
            acceptors: (0..3)
                .map(|i| AcceptorEntry {
                    id: 1 + u32::from(i),
                    address: at(port + i),
                    listen: None,
                    metrics: None,
                    storage: StorageKind::Memory,
                    data_dir: None,
                })
                .collect(),
            replicas: (0..2)
                .map(|i| ReplicaEntry {
                    id: 101 + u32::from(i),
                    address: at(port + 100 + i),
                    listen: None,
                    metrics: None,
                    engine,
                    threads: if engine == EngineKind::Smr {
                        1
                    } else {
                        threads
                    },
                    policy: PolicyName::Fixed,
                    data_dir: None,
                })
                .collect(),
            rings: Vec::new(),
            tls: TlsSection::default(),
            multicast: Params::default(),
            service: ServiceSection::default(),
            checkpoint: CheckpointSection::default(),
        }
    }

    /// Checks everything a process needs to start; the error names the field.
    pub fn validate(&self) -> Result<(), ClusterError> {
        if self.acceptors.is_empty() {
            return Err(ClusterError::Empty { field: "acceptor" });
        }
        if self.replicas.is_empty() {
            return Err(ClusterError::Empty { field: "replica" });
        }
        self.check_unique()?;
        self.check_replicas()?;
        if self.checkpoint.keep == 0 {
            return Err(ClusterError::KeepNothing);
        }
        if self.service.value_size > MAX_VALUE_SIZE {
            return Err(ClusterError::ValueSize(self.service.value_size));
        }
        self.check_rings()?;
        self.multicast().validate()?;
        Ok(())
    }

    fn check_unique(&self) -> Result<(), ClusterError> {
        let mut ids = BTreeSet::new();
        let mut addresses = BTreeSet::new();
        let entries =
            self.acceptors
                .iter()
                .enumerate()
                .map(|(i, a)| {
                    (
                        "acceptor",
                        i,
                        a.id,
                        a.address,
                        a.listen,
                        a.metrics_address(),
                    )
                })
                .chain(
                    self.replicas.iter().enumerate().map(|(i, r)| {
                        ("replica", i, r.id, r.address, r.listen, r.metrics_address())
                    }),
                );
        let mut metrics_addresses = BTreeSet::new();
        for (field, index, id, address, listen, metrics) in entries {
            if !ids.insert(id) {
                return Err(ClusterError::DuplicateId { field, index, id });
            }
            // A distinct listen address takes a UDP port as an address does.
            let listen = listen
                .filter(|l| *l != address)
                .map(|l| ("listen", l, false));
            let checks = [
                Some(("address", address, false)),
                listen,
                Some(("metrics", metrics, true)),
            ];
            for (what, address, is_metrics) in checks.into_iter().flatten() {
                let seen = match is_metrics {
                    false => &mut addresses,
                    true => &mut metrics_addresses,
                };
                if address.port() == 0 {
                    return Err(ClusterError::PortZero { field, index, what });
                }
                if !seen.insert(address) {
                    return Err(ClusterError::DuplicateAddress {
                        field,
                        index,
                        what,
                        address,
                    });
                }
            }
        }
        Ok(())
    }

    fn check_replicas(&self) -> Result<(), ClusterError> {
        let first = &self.replicas[0];
        for (index, r) in self.replicas.iter().enumerate() {
            if r.engine != first.engine {
                return Err(ClusterError::ReplicasDisagree {
                    index,
                    field: "engine",
                });
            }
            if r.threads != first.threads {
                return Err(ClusterError::ReplicasDisagree {
                    index,
                    field: "threads",
                });
            }
            if r.policy != PolicyName::Fixed && r.engine != EngineKind::Classes {
                return Err(ClusterError::PolicyWithoutClasses { index });
            }
            if Layout::new(r.engine, r.threads).validate().is_err() {
                return Err(ClusterError::Threads {
                    index,
                    threads: r.threads,
                    engine: r.engine.name(),
                });
            }
        }
        Ok(())
    }

    fn check_rings(&self) -> Result<(), ClusterError> {
        if self.rings.is_empty() {
            let count = self.acceptors.len();
            return if count.is_multiple_of(2) {
                Err(ClusterError::EvenAcceptors { count })
            } else {
                Ok(())
            };
        }
        let expected: Vec<u16> = self.layout().rings().iter().map(|r| r.0).collect();
        let mut listed: Vec<u16> = self.rings.iter().map(|r| r.id).collect();
        listed.sort_unstable();
        if listed != expected {
            let r = &self.replicas[0];
            return Err(ClusterError::RingsDisagree {
                engine: r.engine.name(),
                threads: r.threads,
                expected,
                listed,
            });
        }
        let acceptors: BTreeSet<u32> = self.acceptors.iter().map(|a| a.id).collect();
        for (index, ring) in self.rings.iter().enumerate() {
            if let Some(&id) = ring.acceptors.iter().find(|id| !acceptors.contains(id)) {
                return Err(ClusterError::UnknownAcceptor { index, id });
            }
        }
        Ok(())
    }

    /// K of the replicas.
    pub fn threads(&self) -> usize {
        self.replicas.first().map_or(1, |r| r.threads)
    }

    /// The engine of the replicas.
    pub fn engine(&self) -> EngineKind {
        self.replicas.first().map_or(EngineKind::Smr, |r| r.engine)
    }

    /// The rings and merges of the replicas' engine and K.
    pub fn layout(&self) -> Layout {
        Layout::new(self.engine(), self.threads())
    }

    /// The reconfiguration policy of the replicas (`classes` only).
    pub fn policy(&self) -> PolicyName {
        self.replicas
            .first()
            .map_or(PolicyName::Fixed, |r| r.policy)
    }

    /// The rings with their acceptors and learners (every replica).
    ///
    /// A ring without a `[[ring]]` entry has every acceptor, in the order of
    /// the `[[acceptor]]` entries, so one acceptor coordinates every such
    /// ring. Clients then send all their proposals to one acceptor and the
    /// rings' messages between two acceptors travel the same way, sharing
    /// packets, which on one machine costs less CPU and fewer datagrams per
    /// command than rotating the order per ring to spread the coordinators
    /// (docs/journal.md, "One coordinator for every ring"). A cluster over
    /// machines that wants the coordinators spread lists its rings.
    pub fn multicast(&self) -> MulticastConfig {
        let learners: Vec<NodeId> = self.replicas.iter().map(|r| NodeId(r.id)).collect();
        let all: Vec<NodeId> = self.acceptors.iter().map(|a| NodeId(a.id)).collect();
        let layout = self.layout();
        let rings = layout
            .rings()
            .into_iter()
            .map(|id| {
                let acceptors = match self.rings.iter().find(|r| r.id == id.0) {
                    Some(r) => r.acceptors.iter().map(|&a| NodeId(a)).collect(),
                    None => all.clone(),
                };
                RingConfig {
                    id,
                    acceptors,
                    learners: learners.clone(),
                }
            })
            .collect();
        MulticastConfig {
            rings,
            merges: layout.merges(),
            params: self.multicast.clone(),
        }
    }

    /// The entry of acceptor `id`, if the file lists it.
    pub fn acceptor(&self, id: NodeId) -> Option<&AcceptorEntry> {
        self.acceptors.iter().find(|a| a.id == id.0)
    }

    /// The entry of replica `id`, if the file lists it.
    pub fn replica(&self, id: NodeId) -> Option<&ReplicaEntry> {
        self.replicas.iter().find(|r| r.id == id.0)
    }

    /// Every node's address.
    pub fn addresses(&self) -> HashMap<NodeId, SocketAddr> {
        let acceptors = self.acceptors.iter().map(|a| (NodeId(a.id), a.address));
        let replicas = self.replicas.iter().map(|r| (NodeId(r.id), r.address));
        acceptors.chain(replicas).collect()
    }

    /// The address node `id` binds to: its `listen` address, else its `address`.
    pub fn listen_address(&self, id: NodeId) -> Option<SocketAddr> {
        let acceptor = self.acceptor(id).map(|a| a.listen.unwrap_or(a.address));
        acceptor.or_else(|| self.replica(id).map(|r| r.listen.unwrap_or(r.address)))
    }

    /// Every node as `(role, id, address, metrics address)`: the acceptors
    /// in file order, then the replicas; `role` is `acceptor` or `replica`.
    pub fn endpoints(
        &self,
    ) -> impl Iterator<Item = (&'static str, u32, SocketAddr, SocketAddr)> + '_ {
        let acceptors = self
            .acceptors
            .iter()
            .map(|a| ("acceptor", a.id, a.address, a.metrics_address()));
        let replicas = self
            .replicas
            .iter()
            .map(|r| ("replica", r.id, r.address, r.metrics_address()));
        acceptors.chain(replicas)
    }

    /// Every node id.
    pub fn nodes(&self) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = self.addresses().into_keys().collect();
        ids.sort_unstable();
        ids
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ClusterConfig, ClusterError> {
        ClusterConfig::parse(text, Path::new("test.toml"))
    }

    const GOOD: &str = r#"
        [[acceptor]]
        id = 1
        address = "127.0.0.1:7101"
        [[acceptor]]
        id = 2
        address = "127.0.0.1:7102"
        storage = "durable"
        [[acceptor]]
        id = 3
        address = "127.0.0.1:7103"
        [[replica]]
        id = 101
        address = "127.0.0.1:7201"
        engine = "opt-psmr"
        threads = 2
        [multicast]
        batch_delay = "2ms"
        window = 64
    "#;

    #[test]
    fn a_good_file_derives_rings_learners_and_parameters() {
        let c = parse(GOOD).unwrap();
        let m = c.multicast();
        assert_eq!(m.rings.len(), 3);
        let listed = vec![NodeId(1), NodeId(2), NodeId(3)];
        assert!(
            m.rings.iter().all(|r| r.acceptors == listed),
            "unlisted rings take the acceptors in file order"
        );
        assert_eq!(m.rings[0].learners, vec![NodeId(101)]);
        assert_eq!(m.params.batch_delay, Duration::from_millis(2));
        assert_eq!(m.params.window, 64);
        assert_eq!(c.acceptors[1].storage, StorageKind::Durable);
        assert_eq!(c.acceptors[0].data_dir(), PathBuf::from("data/acceptor-1"));
        assert_eq!(c.engine(), EngineKind::OptPsmr);
        let back = parse(&c.to_toml()).unwrap();
        assert_eq!(back, c);
        assert_eq!(c.listen_address(NodeId(1)), Some(c.acceptors[0].address));
        let behind = GOOD.replacen(
            "address = \"127.0.0.1:7102\"",
            "address = \"127.0.0.1:7102\"\nlisten = \"127.0.0.1:8102\"",
            1,
        );
        let behind = parse(&behind).unwrap();
        assert_eq!(
            behind.addresses()[&NodeId(2)].port(),
            7102,
            "others reach it here"
        );
        assert_eq!(behind.listen_address(NodeId(2)).unwrap().port(), 8102);
        assert_eq!(parse(&behind.to_toml()).unwrap(), behind);
        let spread = format!(
            "{GOOD}\n[[ring]]\nid = 0\nacceptors = [3, 1, 2]\n[[ring]]\nid = 1\nacceptors = [2, 3, 1]\n[[ring]]\nid = 2\nacceptors = [1, 2, 3]\n"
        );
        let m = parse(&spread).unwrap().multicast();
        assert_eq!(m.rings[0].acceptors, vec![NodeId(3), NodeId(1), NodeId(2)]);
        assert_eq!(m.rings[1].acceptors, vec![NodeId(2), NodeId(3), NodeId(1)]);
    }

    // An acceptor started from another working directory must find its own
    // storage: relative paths are the cluster file's, not the process's.
    #[test]
    fn relative_directories_resolve_against_the_cluster_file() {
        let file = Path::new("/srv/conf/cluster.toml");
        let text = GOOD.replace(
            "address = \"127.0.0.1:7103\"",
            "address = \"127.0.0.1:7103\"\n        data_dir = \"/abs/a3\"",
        );
        let text = format!("{text}\n[tls]\ndir = \"certs\"\n");
        let c = ClusterConfig::parse(&text, file).unwrap();
        let conf = Path::new("/srv/conf");
        assert_eq!(c.acceptors[0].data_dir(), conf.join("data/acceptor-1"));
        assert_eq!(c.acceptors[2].data_dir(), PathBuf::from("/abs/a3"));
        assert_eq!(c.tls.dir, conf.join("certs"));
    }

    #[test]
    fn the_execution_cost_is_read_and_survives_a_round_trip() {
        assert!(parse(GOOD).unwrap().service.cost().is_zero());
        let text = format!("{GOOD}\n[service]\nexec_busy = \"20us\"\nexec_wait = \"1ms\"\n");
        let c = parse(&text).unwrap();
        let cost = c.service.cost();
        assert_eq!(cost.busy, Duration::from_micros(20));
        assert_eq!(cost.wait, Duration::from_millis(1));
        assert_eq!(parse(&c.to_toml()).unwrap(), c);
    }

    #[test]
    fn the_local_cluster_is_valid() {
        for engine in EngineKind::ALL {
            let c = ClusterConfig::local(7100, engine, 2);
            c.validate().unwrap();
            let rings = c.multicast().rings.len();
            assert_eq!(rings, if engine.has_thread_rings() { 3 } else { 1 });
        }
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn bad_files_are_rejected_naming_the_field() {
        let even = GOOD.replace(
            "[[replica]]",
            "[[acceptor]]\nid = 4\naddress = \"127.0.0.1:7104\"\n[[replica]]",
        );
        assert_eq!(
            error(&even),
            "acceptor: 4 acceptors; rings derived from them need an odd number (2f+1)"
        );
        let policy = GOOD.replacen(
            "engine = \"opt-psmr\"",
            "engine = \"opt-psmr\"\npolicy = \"jump\"",
            1,
        );
        assert!(
            error(&policy).starts_with("replica[0].policy: only engine classes"),
            "{}",
            error(&policy)
        );
        let dup = GOOD.replace("127.0.0.1:7102", "127.0.0.1:7101");
        assert_eq!(
            error(&dup),
            "acceptor[1].address: 127.0.0.1:7101 is used twice"
        );
        let listen = GOOD.replacen(
            "address = \"127.0.0.1:7102\"",
            "address = \"127.0.0.1:7102\"\nlisten = \"127.0.0.1:7101\"",
            1,
        );
        assert_eq!(
            error(&listen),
            "acceptor[1].listen: 127.0.0.1:7101 is used twice"
        );
        let dup_id = GOOD.replace("id = 101", "id = 3");
        assert_eq!(error(&dup_id), "replica[0].id: node id 3 is used twice");
        let rings = format!("{GOOD}\n[[ring]]\nid = 0\nacceptors = [1, 2, 3]\n");
        assert!(
            error(&rings).starts_with("ring: opt-psmr with K = 2 needs rings [0, 1, 2]"),
            "{}",
            error(&rings)
        );
        let smr = GOOD.replace("\"opt-psmr\"", "\"smr\"");
        assert!(error(&smr).starts_with("replica[0].threads: 2 threads with engine smr"));
        let unknown = GOOD.replace("window = 64", "windw = 64");
        assert!(
            error(&unknown).contains("unknown field `windw`"),
            "{}",
            error(&unknown)
        );
        let zero = GOOD.replace("window = 64", "window = 0");
        assert_eq!(error(&zero), "params.window must be greater than zero");
        let no_replica = GOOD.split("[[replica]]").next().unwrap().to_string();
        assert_eq!(
            error(&no_replica),
            "replica: at least one entry is required"
        );
    }
}
