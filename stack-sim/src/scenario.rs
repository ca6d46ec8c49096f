//! What a seed draws: the cluster, the clients and their load, the
//! network's misbehaviour, the clocks and the faults.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use psmr_client::ClientOptions;
use psmr_client::linearizability::KvOp;
use psmr_core::EngineKind;
use psmr_core::cluster::ClusterConfig;
use psmr_core::proto::NodeId;
use psmr_replica::EngineConfig;
use rand::{RngExt, SeedableRng};
use rand_chacha::ChaCha8Rng;

use crate::clock::Clock;

/// What a run is asked for besides its seed.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct StackOptions {
    /// The replicas' engine.
    pub engine: EngineKind,
    /// opt-psmr clients always guess (the paper's opt-PSMR), without
    /// adaptive optimism.
    pub always_guess: bool,
    /// A bug planted in the replica layer (feature `planted-bugs`).
    #[cfg(feature = "planted-bugs")]
    pub planted: Option<psmr_replica::PlantedBug>,
}

impl StackOptions {
    /// A run of `engine`, no bug planted.
    pub fn new(engine: EngineKind) -> StackOptions {
        StackOptions {
            engine,
            always_guess: false,
            #[cfg(feature = "planted-bugs")]
            planted: None,
        }
    }

    /// Environment settings, besides the seed and engine, that replay a run.
    pub fn replay_flags(&self) -> String {
        let mut flags = String::new();
        if self.always_guess {
            flags.push_str(" PSMR_STACK_ALWAYS_GUESS=1");
        }
        #[cfg(feature = "planted-bugs")]
        if self.planted.is_some() {
            flags.push_str(" PSMR_STACK_PLANTED=execute-resent");
        }
        flags
    }
}

/// A fault, as the simulator injects it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// The acceptor crashes (what it had not synced is lost) and restarts
    /// at the end; skipped if a majority would not stay up.
    Crash(NodeId),
    /// The process stops: messages to it wait, its timers do not run.
    Pause(NodeId),
    /// Every message to or from the node is lost.
    Isolate(NodeId),
    /// Every message from `from` to `to` is lost.
    OneWay {
        /// Sender.
        from: NodeId,
        /// Receiver.
        to: NodeId,
    },
}

/// A fault and when.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FaultAt {
    /// Virtual start.
    pub at: Duration,
    /// How long.
    pub duration: Duration,
    /// What.
    pub kind: Fault,
}

/// How the network misbehaves until the run heals.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Network {
    /// Share of messages lost.
    pub loss: f64,
    /// Share of messages delivered twice.
    pub duplicate: f64,
    /// Every message takes between these.
    pub min_delay: Duration,
    /// See `min_delay`.
    pub max_delay: Duration,
    /// Share of messages slowed by up to `slow_extra` more (reordering).
    pub slow: f64,
    /// See `slow`.
    pub slow_extra: Duration,
}

/// One run's setting, drawn from its seed.
#[derive(Clone, Debug)]
pub struct Scenario {
    /// The seed.
    pub seed: u64,
    /// The options.
    pub options: StackOptions,
    /// The cluster (3 or 5 acceptors, 2 replicas, K = 2).
    pub cluster: ClusterConfig,
    /// Each node's clock (acceptors, replicas, clients).
    pub clocks: BTreeMap<NodeId, Clock>,
    /// Clients.
    pub clients: usize,
    /// Calls in flight per client.
    pub lanes: usize,
    /// Keys `0..keys`, also the service's partitioned key space.
    pub keys: u64,
    /// The B+-tree's fanout (small: inserts and deletes split and merge
    /// nodes, so opt-PSMR's safety check fails).
    pub fanout: usize,
    /// Calls are made until then.
    pub load: Duration,
    /// Pause between a lane's answer and its next call, up to this.
    pub think: Duration,
    /// The faults, in the load's time.
    pub faults: Vec<FaultAt>,
    /// The network's misbehaviour.
    pub network: Network,
    /// Execution time per command the replicas report to clients (it moves
    /// the sequential fallback's threshold).
    pub execution_ns: u64,
    /// Bytes per value written (at least 8: a value's first 8 bytes name
    /// the unique write it came from).
    pub value_size: usize,
}

impl Scenario {
    /// The scenario of `seed`.
    pub fn from_seed(seed: u64, options: StackOptions) -> Scenario {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        let mut cluster = ClusterConfig::local(7_000, options.engine, 2);
        let acceptors = if rng.random_bool(0.3) { 5 } else { 3 };
        while cluster.acceptors.len() < acceptors {
            let mut entry = cluster.acceptors[0].clone();
            let i = cluster.acceptors.len() as u16;
            entry.id = 1 + u32::from(i);
            entry.address = SocketAddr::from(([127, 0, 0, 1], 7_000 + i));
            cluster.acceptors.push(entry);
        }
        let clients = rng.random_range(2..=4);
        let nodes = node_ids(&cluster, clients);
        let skewed = rng.random_bool(0.75);
        let clocks = nodes
            .iter()
            .map(|&id| (id, draw_clock(&mut rng, skewed)))
            .collect();
        let load = Duration::from_millis(rng.random_range(1_500..=3_000));
        let faults = draw_faults(&mut rng, &cluster, &nodes, load);
        let network = Network {
            // Loss costs a resend timer per message lost, hundreds of ms:
            // some runs lose only what faults cut, and make enough calls
            // for the sequential fallback's window.
            loss: if rng.random_bool(0.4) {
                0.0
            } else {
                rng.random_range(0.0..0.03)
            },
            duplicate: rng.random_range(0.0..0.04),
            min_delay: Duration::from_micros(50),
            max_delay: Duration::from_micros(rng.random_range(100..=600)),
            slow: rng.random_range(0.0..0.05),
            slow_extra: Duration::from_millis(rng.random_range(1..=20)),
        };
        Scenario {
            seed,
            options,
            cluster,
            clocks,
            clients,
            lanes: rng.random_range(1..=3),
            keys: rng.random_range(2..=6),
            fanout: 4,
            load,
            think: Duration::from_micros(rng.random_range(0..=2_000)),
            faults,
            network,
            execution_ns: if rng.random_bool(0.5) { 1_000 } else { 50_000 },
            value_size: [8, 40, 300][rng.random_range(0..3)],
        }
    }

    /// When the network heals and every fault ends.
    pub fn heal_at(&self) -> Duration {
        self.load + Duration::from_millis(500)
    }

    /// The replicas' engine configuration.
    pub fn engine_config(&self) -> EngineConfig {
        #[allow(unused_mut)]
        let mut config = EngineConfig::of_cluster(&self.cluster);
        #[cfg(feature = "planted-bugs")]
        {
            config.planted = self.options.planted;
        }
        config
    }

    /// The clients' options: the SDK's defaults, with a deadline past any
    /// fault (a timeout is an unknown outcome, which the checker accepts
    /// but which proves less).
    pub fn client_options(&self) -> ClientOptions {
        let defaults = ClientOptions::default();
        ClientOptions {
            deadline: Duration::from_secs(30),
            optimism_below: match self.options.always_guess {
                true => 1.0,
                false => defaults.optimism_below,
            },
            ..defaults
        }
    }

    /// A random operation on a random key; `unique` makes its value unique.
    pub fn draw_op(&self, rng: &mut ChaCha8Rng, unique: u64) -> KvOp {
        let key = rng.random_range(0..self.keys);
        let value = unique + 1;
        match rng.random_range(0..4) {
            0 => KvOp::Get(key),
            1 => KvOp::Put(key, value),
            2 => KvOp::Insert(key, value),
            _ => KvOp::Delete(key),
        }
    }

    /// One line: the cluster, the load, the network, the faults.
    pub fn summary(&self) -> String {
        let faults: Vec<String> = self
            .faults
            .iter()
            .map(|f| format!("{:?}@{:?}+{:?}", f.kind, f.at, f.duration))
            .collect();
        format!(
            "acceptors={} clients={}x{} keys={} load={:?} loss={:.3} dup={:.3} exec_ns={} skewed={} faults=[{}]",
            self.cluster.acceptors.len(),
            self.clients,
            self.lanes,
            self.keys,
            self.load,
            self.network.loss,
            self.network.duplicate,
            self.execution_ns,
            self.clocks.values().any(|c| c.ppm != 0),
            faults.join(", ")
        )
    }
}

/// Acceptors, replicas and the load's clients (1001, 1002, ...).
fn node_ids(cluster: &ClusterConfig, clients: usize) -> Vec<NodeId> {
    let acceptors = cluster.acceptors.iter().map(|a| NodeId(a.id));
    let replicas = cluster.replicas.iter().map(|r| NodeId(r.id));
    let clients = (0..clients).map(|i| NodeId(1_001 + i as u32));
    acceptors.chain(replicas).chain(clients).collect()
}

fn draw_clock(rng: &mut ChaCha8Rng, skewed: bool) -> Clock {
    if !skewed {
        return Clock {
            offset: Duration::ZERO,
            ppm: 0,
        };
    }
    Clock {
        offset: Duration::from_micros(rng.random_range(0..=300_000)),
        ppm: rng.random_range(-2_000..=2_000),
    }
}

/// Two to six faults during the load.
fn draw_faults(
    rng: &mut ChaCha8Rng,
    cluster: &ClusterConfig,
    nodes: &[NodeId],
    load: Duration,
) -> Vec<FaultAt> {
    let acceptors: Vec<NodeId> = cluster.acceptors.iter().map(|a| NodeId(a.id)).collect();
    let replicas: Vec<NodeId> = cluster.replicas.iter().map(|r| NodeId(r.id)).collect();
    let pick = |rng: &mut ChaCha8Rng, of: &[NodeId]| of[rng.random_range(0..of.len())];
    let count = rng.random_range(2..=6);
    (0..count)
        .map(|_| {
            let kind = match rng.random_range(0..5) {
                0 => Fault::Crash(pick(rng, &acceptors)),
                1 => Fault::Pause(pick(rng, &replicas)),
                2 => Fault::Pause(pick(rng, &acceptors)),
                3 => Fault::Isolate(pick(rng, nodes)),
                _ => {
                    let from = pick(rng, nodes);
                    let mut to = pick(rng, nodes);
                    while to == from {
                        to = pick(rng, nodes);
                    }
                    Fault::OneWay { from, to }
                }
            };
            let at = Duration::from_millis(rng.random_range(100..nanos_ms(load)));
            let duration = Duration::from_millis(rng.random_range(50..=800));
            FaultAt { at, duration, kind }
        })
        .collect()
}

fn nanos_ms(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
